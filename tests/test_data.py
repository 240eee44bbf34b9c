"""Data sources: split integrity, stable instance ids, user-folder errors, seeded generators."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from kd_engine.data import DATASETS, GENERATORS, build_data, stratified_split
from kd_engine.errors import ConfigError, DataError


def cfg(name="digits", **kw):
    base = dict(name=name, root=None, val_fraction=0.15, test_fraction=0.2, split_seed=None,
                image_size=None, params={})
    base.update(kw)
    return SimpleNamespace(**base)


def all_ids(b):
    return [b.train.ids.tolist(), b.val.ids.tolist(), b.test.ids.tolist()]


def test_registry_names():
    assert {"digits", "imagefolder", "synthetic"} <= set(DATASETS.names())
    assert "shapes" in GENERATORS


def test_digits_shapes_and_disjoint_ids():
    b = build_data(cfg(), seed=0)
    assert b.num_classes == 10 and b.input_shape == (1, 8, 8)
    assert b.class_names == [str(i) for i in range(10)]
    tr, va, te = all_ids(b)
    assert len(tr) + len(va) + len(te) == 1797
    assert len(set(tr) | set(va) | set(te)) == 1797
    assert abs(len(te) - 0.2 * 1797) <= 2 and abs(len(va) - 0.15 * 1797) <= 2
    x, y, i = b.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and i.dtype == torch.int64 and y.ndim == 0 and i.ndim == 0


def test_digits_stratified():
    b = build_data(cfg(), seed=3)
    full = np.bincount(load_digits().target, minlength=10) / 1797
    for split in (b.train, b.val, b.test):
        share = np.bincount(split.y.numpy(), minlength=10) / len(split)
        assert np.abs(share - full).max() < 0.01


def test_digits_split_seeded():
    a, b = build_data(cfg(), seed=1), build_data(cfg(), seed=1)
    c = build_data(cfg(), seed=2)
    assert all_ids(a) == all_ids(b)
    assert all_ids(a)[2] != all_ids(c)[2]
    # split_seed overrides the run seed
    d = build_data(cfg(split_seed=1), seed=99)
    assert all_ids(d) == all_ids(a)


def test_digits_ids_are_row_indices():
    b = build_data(cfg(), seed=0)
    images = load_digits().images / 16.0
    for split in (b.train, b.val, b.test):
        for k in (0, len(split) // 2, len(split) - 1):
            x, y, i = split[k]
            np.testing.assert_allclose(x[0].numpy(), images[int(i)], atol=1e-6)
            assert int(y) == load_digits().target[int(i)]
    gal = b.images([5, 1000])
    assert gal.shape == (2, 8, 8) and gal.dtype == np.float32
    np.testing.assert_allclose(gal[1], images[1000], atol=1e-6)
    assert 0.0 <= gal.min() and gal.max() <= 1.0


def test_stratified_split_function():
    labels = np.repeat(np.arange(4), 50)
    tr, va, te = stratified_split(labels, 0.2, 0.2, seed=0)
    assert len(tr) + len(va) + len(te) == 200
    assert not (set(tr) & set(va) or set(tr) & set(te) or set(va) & set(te))
    for part in (va, te):
        assert (np.bincount(labels[part], minlength=4) == 10).all()
    with pytest.raises(ConfigError, match="val_fraction"):
        stratified_split(labels, 0.7, 0.5, seed=0)


def _make_folder(root, colors=None):
    colors = colors or {"cat": [(255, 0, 0), (200, 0, 0), (150, 10, 0)],
                        "dog": [(0, 0, 255), (0, 10, 200), (0, 0, 150)]}
    for cls, cs in colors.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k, c in enumerate(cs):
            Image.new("RGB", (10, 12), c).save(root / cls / f"img{k}.png")


def test_imagefolder_basic(tmp_path):
    _make_folder(tmp_path)
    b = build_data(cfg("imagefolder", root=str(tmp_path), image_size=6), seed=0)
    assert b.class_names == ["cat", "dog"] and b.num_classes == 2
    assert b.input_shape == (3, 6, 6)
    ids = sum(all_ids(b), [])
    assert len(ids) == 6 and len(set(ids)) == 6 and min(ids) >= 0
    paths = b.meta["paths"]
    assert sorted(paths.values()) == sorted(f"{c}/img{k}.png" for c in ("cat", "dog")
                                            for k in range(3))
    # images are in [0, 1], HWC for colour, and match the class colour
    cat_id = next(i for i, p in paths.items() if p == "cat/img0.png")
    img = b.images([cat_id])
    assert img.shape == (1, 6, 6, 3)
    np.testing.assert_allclose(img[0, 2, 2], [1.0, 0.0, 0.0], atol=1e-6)
    for split in (b.train, b.val, b.test):
        for x, y, i in split:
            assert b.class_names[int(y)] == paths[int(i)].split("/")[0]


def test_imagefolder_grayscale(tmp_path):
    _make_folder(tmp_path)
    b = build_data(cfg("imagefolder", root=str(tmp_path), image_size=4,
                       params={"grayscale": True}), seed=0)
    assert b.input_shape == (1, 4, 4)
    assert b.images([int(b.train.ids[0])]).shape == (1, 4, 4)


def test_imagefolder_ids_stable_when_files_added(tmp_path):
    _make_folder(tmp_path)
    before = build_data(cfg("imagefolder", root=str(tmp_path), image_size=6), seed=0).meta["paths"]
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "dog" / "extra.png")
    after = build_data(cfg("imagefolder", root=str(tmp_path), image_size=6), seed=0).meta["paths"]
    assert len(after) == 7
    for i, p in before.items():
        assert after[i] == p


def test_imagefolder_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope"):
        build_data(cfg("imagefolder", root=str(missing), image_size=8), seed=0)
    _make_folder(tmp_path / "ok")
    with pytest.raises(ConfigError, match="data.image_size"):
        build_data(cfg("imagefolder", root=str(tmp_path / "ok")), seed=0)
    with pytest.raises(ConfigError, match="grayscal"):
        build_data(cfg("imagefolder", root=str(tmp_path / "ok"), image_size=8,
                       params={"grayscal": True}), seed=0)
    (tmp_path / "ok" / "cat" / "broken.png").write_bytes(b"not really a png")
    with pytest.raises(DataError, match="broken.png"):
        build_data(cfg("imagefolder", root=str(tmp_path / "ok"), image_size=8), seed=0)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        build_data(cfg("imagefolder", root=str(tmp_path / "empty"), image_size=8), seed=0)


def test_synthetic_deterministic_and_balanced():
    c = cfg("synthetic", params={"n": 400})
    a, b, other = build_data(c, seed=5), build_data(c, seed=5), build_data(c, seed=6)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.ids, b.train.ids)
    full_a = torch.cat([a.train.x, a.val.x, a.test.x])[torch.argsort(
        torch.cat([a.train.ids, a.val.ids, a.test.ids]))]
    full_o = torch.cat([other.train.x, other.val.x, other.test.x])[torch.argsort(
        torch.cat([other.train.ids, other.val.ids, other.test.ids]))]
    assert not torch.allclose(full_a, full_o)
    assert a.class_names == ["square", "circle", "triangle", "cross"]
    assert a.input_shape == (1, 16, 16)
    ys = torch.cat([a.train.y, a.val.y, a.test.y])
    assert torch.bincount(ys, minlength=4).tolist() == [100] * 4
    assert sorted(sum(all_ids(a), [])) == list(range(400))
    assert 0.0 <= float(full_a.min()) and float(full_a.max()) <= 1.0


def test_synthetic_params():
    b = build_data(cfg("synthetic", image_size=12, params={"n": 80, "noise": 0.0}), seed=0)
    assert b.input_shape == (1, 12, 12)
    # with no noise every pixel is background (0) or the shape's single intensity
    x = b.train.x[0]
    assert len(torch.unique(x)) == 2
    with pytest.raises(ConfigError, match="nois"):
        build_data(cfg("synthetic", params={"nois": 0.1}), seed=0)
    with pytest.raises(ConfigError, match="generator"):
        build_data(cfg("synthetic", params={"generator": "blobz"}), seed=0)


def test_shapes_generator_classes_differ():
    out = GENERATORS.get("shapes")(200, np.random.default_rng(0), noise=0.0)
    x, y = out["x"], out["y"]
    assert x.shape == (200, 1, 16, 16) and x.dtype == np.float32 and y.dtype == np.int64
    # filled area relative to bounding box differs by class: squares fill most, crosses least
    fill = (x[:, 0] > 0).reshape(200, -1).sum(1)
    rows = (x[:, 0] > 0).any(2).sum(1)
    ratio = fill / rows.astype(float) ** 2
    mean = [ratio[y == k].mean() for k in range(4)]
    assert mean[0] > mean[1] > mean[2] and mean[1] > mean[3]


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="data.name"):
        build_data(cfg("mnistt"), seed=0)

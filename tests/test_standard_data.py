"""Standard datasets by name (torchvision), FakeData, the ImageFolder split convention, the
augmentation presets, and the id -> source map a run keeps."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kd_engine.config import DataConfig
from kd_engine.data import build_data
from kd_engine.data.augment import make_preset, pad_crop
from kd_engine.data.base import ItemInstanceDataset, TensorInstanceDataset, source_map
from kd_engine.errors import ConfigError, DataError


def fake(**kw) -> DataConfig:
    params = {"train_size": 40, "test_size": 12, "num_classes": 4, **kw.pop("params", {})}
    return DataConfig(name="fakedata", params=params, **kw)


def test_fakedata_splits_ids_and_sources():
    b = build_data(fake(val_fraction=0.25), 0)
    assert (len(b.train), len(b.val), len(b.test)) == (30, 10, 12)
    assert b.input_shape == (3, 32, 32) and b.num_classes == 4
    ids = torch.cat([b.train.ids, b.val.ids, b.test.ids]).sort().values
    assert ids.tolist() == list(range(52))  # train index, then len(train) + test index
    assert b.sources([0, 39, 40]) == ["FakeData/train[0]", "FakeData/train[39]", "FakeData/test[0]"]
    assert set(b.test.ids.tolist()) == set(range(40, 52))
    again = build_data(fake(val_fraction=0.25), 0)
    assert torch.equal(again.train.x, b.train.x) and torch.equal(again.val.ids, b.val.ids)
    assert len(source_map(b)) == 52


def test_lazy_split_reads_items_like_the_materialised_one():
    lazy = build_data(fake(params={"memory_mb": 0.001}), 0)
    eager = build_data(fake(), 0)
    assert isinstance(lazy.val, ItemInstanceDataset) and isinstance(eager.val, TensorInstanceDataset)
    x, y, i = lazy.val[0]
    assert x.shape == (3, 32, 32) and y.dtype == torch.int64 and int(i) == int(eager.val.ids[0])
    assert torch.allclose(x, eager.val.x[0])
    loader = torch.utils.data.DataLoader(lazy.train, batch_size=8)
    xb, yb, ib = next(iter(loader))
    assert xb.shape == (8, 3, 32, 32) and torch.equal(ib, lazy.train.ids[:8])


def test_missing_dataset_is_one_line_naming_the_folder(tmp_path):
    with pytest.raises(DataError) as err:
        build_data(DataConfig(name="cifar100", root=str(tmp_path)), 0)
    message = str(err.value)
    assert "\n" not in message and "cifar-100-python" in message and "data.download: true" in message
    with pytest.raises(ConfigError, match="data.root"):
        build_data(DataConfig(name="cifar10"), 0)


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_its_official_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 2051)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 3, 2049)
    b = build_data(DataConfig(name="mnist", root=str(tmp_path), val_fraction=0.2), 0)
    assert b.input_shape == (1, 28, 28) and b.num_classes == 10
    assert (len(b.train), len(b.val), len(b.test)) == (24, 6, 10)
    assert b.test.y.tolist() == [k % 3 for k in range(10)]
    # normalised with MNIST's mean and std
    pixel = b.test.x[0, 0, 0, 0].item()
    first = np.frombuffer((raw / "t10k-images-idx3-ubyte").read_bytes()[16:17], np.uint8)[0] / 255
    assert pixel == pytest.approx((first - 0.1307) / 0.3081, abs=1e-5)


def test_cifar_preset_is_pad_crop_and_flip():
    preset = make_preset("cifar", 32, (0.5,), (0.25,), 3)
    x = torch.randn(16, 3, 32, 32)
    torch.manual_seed(0)
    out = preset.batch(x)
    fill = -0.5 / 0.25  # a black pixel after normalisation
    for src, got in zip(x, out):
        padded = torch.nn.functional.pad(src, (4, 4, 4, 4), value=fill)
        views = [padded[:, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.allclose(got, v, atol=1e-6) or torch.allclose(got, v.flip(2), atol=1e-6) for v in views)
    assert pad_crop(x, 0).equal(x)


def test_imagenet_preset_sizes():
    preset = make_preset("imagenet", 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    image = Image.new("RGB", (400, 300), (255, 0, 0))
    assert preset.eval_transform()(image).shape == (3, 224, 224)
    assert preset.train_transform()(image).shape == (3, 224, 224)
    with pytest.raises(ConfigError, match="data.augment"):
        make_preset("autoaugment", 32)


def _folder(root: Path, layout: dict[str, list[str]], per_class: int = 4, size: int = 10) -> None:
    rng = np.random.default_rng(0)
    for split, classes in layout.items():
        for cls in classes:
            d = root / split / cls if split else root / cls
            d.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{k}.png")


def test_imagefolder_train_val_folders_are_splits(tmp_path):
    _folder(tmp_path, {"train": ["cat", "dog", "emu"], "val": ["cat", "dog", "emu"]}, per_class=6)
    b = build_data(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8, val_fraction=0.3), 0)
    assert b.class_names == ["cat", "dog", "emu"] and b.num_classes == 3
    assert len(b.test) == 18 and len(b.train) + len(b.val) == 18 and len(b.val) == 6
    assert all(s.startswith("val/") for s in b.sources(b.test.ids.tolist()))
    assert all(s.startswith("train/") for s in b.sources(b.val.ids.tolist()))
    assert b.meta["splits"]["test"] == "val/"


def test_imagefolder_train_val_test_folders(tmp_path):
    _folder(tmp_path, {"train": ["a", "b"], "val": ["a", "b"], "test": ["a", "b"]})
    b = build_data(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8), 0)
    assert [len(b.train), len(b.val), len(b.test)] == [8, 8, 8]
    assert b.sources(b.val.ids[:1].tolist())[0].startswith("val/")
    _folder(tmp_path, {"val": ["zebra"]})
    with pytest.raises(DataError, match="zebra"):
        build_data(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8), 0)


def test_imagefolder_single_folder_still_split_by_seed(tmp_path):
    _folder(tmp_path, {"": ["train", "val"]}, per_class=10)  # classes that happen to be named so
    b = build_data(DataConfig(name="imagefolder", root=str(tmp_path), image_size=8), 0)
    assert b.class_names == ["train", "val"]  # no train/ + val/ of class folders: plain classes
    assert len(b.train) + len(b.val) + len(b.test) == 20


def test_imagefolder_lazy_reads_files(tmp_path):
    _folder(tmp_path, {"train": ["a", "b"], "val": ["a", "b"]})
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), image_size=8, augment="cifar",
                     params={"memory_mb": 0.0001})
    b = build_data(cfg, 0)
    assert isinstance(b.train, ItemInstanceDataset)
    x, y, i = b.train[0]
    assert x.shape == (3, 8, 8) and b.sources([int(i)])[0].startswith("train/")
    assert b.images(b.test.ids[:2].tolist()).shape == (2, 8, 8, 3)


def test_digits_take_an_augment_preset():
    plain = build_data(DataConfig(name="digits"), 0)
    shifted = build_data(DataConfig(name="digits", augment="cifar"), 0)
    assert plain.train.augment is None and shifted.train.augment is not None
    torch.manual_seed(0)
    assert shifted.train.augment(shifted.train.x[:8]).shape == (8, 1, 8, 8)


def _train_folder(tmp_path, root, size, **overrides):
    from kd_engine.config import validate
    from kd_engine.store import open_run
    from kd_engine.run import train
    from tests.conftest import digits_raw, set_key

    raw = digits_raw(tmp_path / "runs", tmp_path / "cache", {
        "epochs": 1, "teacher.train.epochs": 1, "record.tensorboard": False,
        "data": {"name": "imagefolder", "root": str(root), "image_size": size, "batch_size": 8},
        "teacher.params": {"width": 8, "depth": 1}, "student.params": {"width": 4, "depth": 1}})
    for key, value in overrides.items():
        set_key(raw, key, value)
    return open_run(train(validate(raw), distributed=False))


def test_train_val_folder_run_uses_folder_classes_and_keeps_file_names(tmp_path):
    root = tmp_path / "photos"
    _folder(root, {"train": ["cat", "dog", "emu"], "val": ["cat", "dog", "emu"]}, per_class=5)
    run = _train_folder(tmp_path, root, 8, **{"data.augment": "cifar"})
    meta = run.meta()
    assert meta["status"] == "finished"
    assert meta["class_names"] == ["cat", "dog", "emu"]
    sources = meta["sources"]
    assert len(sources) == 30 and sorted(set(s.split("/")[0] for s in sources.values())) == ["train", "val"]
    test_ids = set(run.instances(split="test").instance_id.astype(int))
    assert {sources[str(i)].split("/")[0] for i in test_ids} == {"val"}


def test_64px_folder_run_with_default_recording_finishes(tmp_path):
    root = tmp_path / "big"
    _folder(root, {"": ["a", "b"]}, per_class=12, size=64)
    run = _train_folder(tmp_path, root, 64)
    assert run.meta()["status"] == "finished"
    assert not run.features().empty  # default recording: the layers both models share


def test_instances_gallery_names_files(tmp_path, monkeypatch):
    """The Instances page's gallery titles each image with its file name from the run's id -> path map."""
    import json

    from streamlit.testing.v1 import AppTest

    root = tmp_path / "photos"
    _folder(root, {"train": ["cat", "dog"], "val": ["cat", "dog"]}, per_class=4)
    run = _train_folder(tmp_path, root, 8)
    monkeypatch.setenv("KDW_RUNS_DIR", str(run.run_dir.parent))
    repo = Path(__file__).resolve().parent.parent
    at = AppTest.from_file(str(repo / "streamlit_app.py"), default_timeout=120)
    at.session_state["kdw_run"] = run.run_dir.name
    at.run()
    at.switch_page("workbench/pages/instances.py").run()
    assert not at.exception, [e.value for e in at.exception]
    titles = [a.get("text", "") for el in at.get("plotly_chart")
              for a in json.loads(el.proto.spec)["layout"].get("annotations", [])]
    named = [t for t in titles if ".png" in t]
    assert named and all(t.split()[0] in {f"{k}.png" for k in range(4)} for t in named)


def test_augmentation_and_teacher_bank_are_refused_together():
    from kd_engine.config import validate
    from tests.conftest import digits_raw

    with pytest.raises(ConfigError, match="data.augment: 'cifar' cannot be combined with use_teacher_bank"):
        validate(digits_raw("runs", "cache", {"use_teacher_bank": True, "data.augment": "cifar"}))


def test_large_source_maps_go_to_artifacts(tmp_path):
    from kd_engine.data.base import save_sources
    from kd_engine.store import RunWriter, open_run

    bundle = build_data(fake(), 0)
    small = RunWriter.create(tmp_path, "small", {}, "name: small\n", tensorboard=False)
    save_sources(small, bundle)
    large = RunWriter.create(tmp_path, "large", {}, "name: large\n", tensorboard=False)
    save_sources(large, bundle, meta_limit=10)
    for writer in (small, large):
        writer.close()
    assert open_run(small.run_dir).meta()["sources"]["40"] == "FakeData/test[0]"
    run = open_run(large.run_dir)
    assert "sources" not in run.meta()
    ids, names = run.load_artifact("instance_source_ids"), run.load_artifact("instance_sources")
    assert dict(zip(ids.tolist(), (n.decode() for n in names)))[40] == "FakeData/test[0]"

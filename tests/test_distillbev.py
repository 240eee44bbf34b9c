"""The DistillBEV method on the BEV task: its terms per imitation mode, what it records per scene
(checked against the scenes' own boxes), the no-scale ablation keeping the foreground total, the
false-positive term, one-line config errors, and a `kdw train` smoke of the shipped config whose
mask artifacts obey the scale mask's identity (the background weighs 1 per scene)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from kd_engine.data.bev_boxes import box_cells, metric_to_cells
from kd_engine.data.bev_dual import build_bev_dual
from kd_engine.errors import ConfigError
from kd_engine.methods.distillbev import DistillBEV
from kd_engine.models import build_model

ROOT = Path(__file__).resolve().parent.parent


def _cfg(**params):
    return SimpleNamespace(method="distillbev", data=SimpleNamespace(name="bev_dual"),
                           distill=SimpleNamespace(params=params))


@pytest.fixture(scope="module")
def setting():
    data = build_bev_dual(SimpleNamespace(params={"n_train": 4, "n_test": 0}), 0)
    torch.manual_seed(0)
    spec = lambda w, ch: SimpleNamespace(name="centerpoint_lite", params={"width": w, "in_channels": ch})  # noqa: E731
    student, teacher = build_model(spec(4, [2]), data.input_shape, 2), build_model(spec(8, [0, 1]), data.input_shape, 2)
    tr = data.train
    boxes = [metric_to_cells(b, data.meta["output_cell"], 16) for b in tr.boxes]
    return data, student, teacher, (tr.x, tr.heatmap), {"reg": tr.reg, "reg_mask": tr.reg_mask, "boxes": boxes}


def test_weighted_terms_record_the_footprints_and_train_student_adapter_and_conv(setting):
    data, student, teacher, args, kwargs = setting
    method = DistillBEV(_cfg(), student, teacher, data.input_shape)
    out = method(*args, **kwargs)
    ps = out.per_sample
    assert {"term_fg", "term_bg", "term_channel", "term_spatial"} <= set(ps) and "term_fp" not in ps
    expected = [int(box_cells(b, 16, 16).any(0).sum()) for b in kwargs["boxes"]]
    assert ps["fg_cells"].tolist() == expected and (ps["fg_cells"] + ps["bg_cells"]).tolist() == [256.0] * 4
    assert all(0 < v < 1 for v in ps["attention_fg_share"].tolist())
    out.total.backward()
    assert method.adapter.weight.grad.abs().sum() > 0 and method.spatial_conv.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())  # no adapter, no gradient on the teacher side


def test_uniform_imitation_is_full_map_mse(setting):
    data, student, teacher, args, kwargs = setting
    method = DistillBEV(_cfg(imitation="uniform", feature_weight=2.0), student, teacher, data.input_shape)
    out = method(*args, **kwargs)
    assert {k for k in out.per_sample if k.startswith("term_")} == {"term_uniform"}
    from kd_engine.models import feature_taps
    with torch.no_grad(), feature_taps(student, ["neck"]) as s, feature_taps(teacher, ["neck"]) as t:
        student(args[0]), teacher(args[0])
        expected = 2.0 * (method.adapter(s["neck"]) - t["neck"]).pow(2).flatten(1).mean(1)
    assert torch.allclose(out.per_sample["term_uniform"], expected, rtol=1e-4)


def test_no_scale_keeps_the_foreground_total_and_fp_regions_are_recorded(setting):
    data, student, teacher, args, kwargs = setting
    masks = {}
    for scale in (True, False):
        method = DistillBEV(_cfg(scale=scale, false_positives=True, fp_score_above=0.05), student, teacher,
                            data.input_shape)
        t_feat = torch.randn(4, 8, 16, 16)
        logits = torch.zeros(4, 2, 16, 16)
        masks[scale] = method._masks(kwargs["boxes"], t_feat, args[1], logits, logits)
    fg = masks[True]["foreground"]
    total = lambda m: (m["scale"] * m["foreground"]).flatten(1).sum(1)  # noqa: E731
    assert torch.allclose(total(masks[True]), total(masks[False]))
    flat = masks[False]["scale"][fg]
    assert torch.allclose(masks[False]["scale"][0][fg[0]], flat[: int(fg[0].sum())].mean().expand(int(fg[0].sum())))
    # sigmoid(0) = 0.5 > 0.05 everywhere: every cell with no object (true heatmap < 0.1, outside the
    # footprints) is a false positive; each component sums to 1, so a scene's sum counts its components
    fp = masks[True]["false_positive"]
    expected = (args[1].amax(1) < 0.1) & ~fg
    assert torch.equal(fp > 0, expected)
    sums = fp.flatten(1).sum(1)
    assert (sums > 0.999).all() and torch.allclose(sums, sums.round(), atol=1e-4)
    out = DistillBEV(_cfg(false_positives=True), student, teacher, data.input_shape)(*args, **kwargs)
    assert {"term_fp", "fp_cells", "fp_components"} <= set(out.per_sample)


def test_bad_params_and_data_fail_in_one_line(setting):
    data, student, teacher, _, _ = setting
    with pytest.raises(ConfigError, match=r"distill.params.imitation"):
        DistillBEV(_cfg(imitation="bogus"), student, teacher, data.input_shape)
    with pytest.raises(ConfigError, match=r"distill.params.tau"):
        DistillBEV(_cfg(tau=0), student, teacher, data.input_shape)
    with pytest.raises(ConfigError, match="data.name"):
        DistillBEV(SimpleNamespace(method="distillbev", data=SimpleNamespace(name="digits"),
                                   distill=SimpleNamespace(params={})), student, teacher, data.input_shape)


SMOKE = {"epochs": 1, "data.params": {"n_train": 16, "n_val": 0, "n_test": 6}, "data.batch_size": 8,
         "teacher.params": {"width": 8, "in_channels": [0, 1]},
         "teacher.data.params": {"n_train": 16, "n_val": 0, "n_test": 6}, "teacher.train.epochs": 1,
         "student.params": {"width": 4, "in_channels": [2]}, "record.attention_maps": 2,
         "record.feature_probe_size": 4, "distill.params.false_positives": True}


def test_distillbev_config_trains_and_records_masks(tmp_path):
    from kd_engine.config import validate
    from kd_engine.experiment import set_key
    from kd_engine.run import train
    from kd_engine.store import open_run

    raw = yaml.safe_load((ROOT / "configs/distillbev_bev.yaml").read_text())
    for key, value in SMOKE.items():
        set_key(raw, key, value)
    raw.update(runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    raw["record"]["tensorboard"] = False
    run = open_run(train(validate(raw, "distillbev_bev.yaml"), distributed=False))
    metrics = run.final_metrics()
    assert run.meta()["task"] == "bev" and {"test/student_AP_small", "test/student_AP_large"} <= set(metrics)
    rows = run.instances(split="train")
    assert {"fg_cells", "bg_cells", "attention_fg_share", "term_fg", "term_bg", "term_fp"} <= set(rows.columns)
    fg = run.load_artifact("bev/test/foreground")
    scale = run.load_artifact("bev/test/scale")
    assert fg.shape == scale.shape == run.load_artifact("bev/test/attention").shape == (2, 16, 16)
    assert np.allclose((scale * (fg == 0)).reshape(2, -1).sum(1), 1.0, atol=1e-4)  # Σ_bg 1/N_bg = 1
    assert run.load_artifact("bev/test/false_positive").shape == (2, 16, 16)

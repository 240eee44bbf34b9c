"""ZeroSeg through the engine at a tiny size, with a stand-in image–text teacher (a fixed random
encoder: the shared CLIP stand-in is trained elsewhere and too slow for a unit test): the run
records the matched token of every view and the segment statistics per image, the threshold is
chosen on validation (the same value on val and test), the probe images' assignment maps and the
teacher's window map are saved, and bad settings name their field."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kd_engine.config import load_raw, validate
from kd_engine.errors import ConfigError
from kd_engine.parts.image_text_teacher import ImageTextTeacher
from kd_engine.store import open_run

REPO = Path(__file__).resolve().parents[1]
TINY = {"n_train": 12, "n_val": 6, "n_test": 6, "grid": 2, "max_digits": 4, "noise": 0.02}


def _teacher(cache_dir, epochs=None) -> ImageTextTeacher:
    weights = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    encode = lambda x: torch.nn.functional.normalize(x.flatten(1) @ weights, dim=-1)  # noqa: E731
    return ImageTextTeacher(encode, torch.nn.functional.normalize(torch.randn(10, 8), dim=-1), 16, "fixed-random")


def _config(tmp_path, **distill):
    raw = load_raw(REPO / "configs" / "zeroseg_scenes.yaml")
    raw.update(epochs=1, eval_every=1, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"), device="cpu")
    raw["data"].update(params=dict(TINY), batch_size=6)
    raw["student"]["params"].update(embed_dim=8, dim=16, heads=2)
    raw["distill"]["params"].update(distill)
    raw["record"] = {"tensorboard": False, "attention_maps": 2}
    return raw


@pytest.fixture()
def fake_teacher(monkeypatch):
    monkeypatch.setattr("kd_engine.methods.zeroseg.shared_image_text_teacher", _teacher)


def _train(raw) -> Path:
    from kd_engine.run import train

    return Path(train(validate(raw, "zeroseg test"), distributed=False))


@pytest.mark.parametrize("matching", ["min", "hungarian"])
def test_run_records_matched_views_segments_and_maps(tmp_path, fake_teacher, matching):
    run = open_run(_train(_config(tmp_path, matching=matching)))
    meta = run.meta()
    assert meta["task"] == "open_vocab_seg"
    final = meta["final_metrics"]
    assert final["val/student_bg_threshold"] == final["test/student_bg_threshold"]  # chosen on val only
    assert 0.0 <= final["test/student_mIoU"] <= 1.0 and 0.0 <= final["test/teacher_mIoU"] <= 1.0
    assert 0.0 <= final["test/student_token_usage_entropy"] <= np.log(6) + 1e-6
    train = run.instances(split="train")
    views = [f"view_token_{v}" for v in range(5)]
    assert set(views + ["assign_entropy", "segments_used", "whole_cos", "distill_loss"]) <= set(train.columns)
    tokens = train[views].to_numpy()
    assert ((tokens >= -1) & (tokens < 6)).all() and (tokens[:, 0] >= 0).all()  # the whole image is never blank
    if matching == "hungarian":  # one-to-one: no token serves two views of one image
        for row in tokens:
            used = row[row >= 0]
            assert len(set(used.tolist())) == len(used)
    test = run.instances(split="test")
    assert len(test) == TINY["n_test"] and test["view_loss"].notna().all()
    names = set(run.artifacts()["name"])
    assert {"segments/test/assign", "segments/test/view_token", "segments/test/segment_class",
            "dense/test/teacher_mask", "dense/test/student_mask", "dense/test/true_mask"} <= names
    assign = run.load_artifact("segments/test/assign")
    assert assign.shape == (2, 16, 16) and assign.min() >= 0 and assign.max() < 6


def test_image_level_baseline_runs_without_segment_tokens(tmp_path, fake_teacher):
    raw = _config(tmp_path, targets="image")
    raw["student"]["params"]["grouping"] = "none"
    run = open_run(_train(raw))
    train = run.instances(split="train")
    assert (train["view_token_1"] == -1).all() and "assign_entropy" not in train.columns
    assert "segments/test/assign" not in set(run.artifacts()["name"])


@pytest.mark.parametrize("change, match", [
    ({"distill": {"matching": "greedy"}}, "distill.params.matching: expected one of min, hungarian"),
    ({"distill": {"grids": [2, 3]}}, "distill.params.grids: positive integers starting with 1"),
    ({"student": {"grouping": "none"}}, "distill.params.targets: 'segments' needs student.params.grouping 'slots'"),
])
def test_bad_settings_name_their_field(tmp_path, fake_teacher, change, match):
    raw = _config(tmp_path, **change.get("distill", {}))
    raw["student"]["params"].update(change.get("student", {}))
    with pytest.raises(ConfigError, match=match):
        _train(raw)

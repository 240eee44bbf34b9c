"""The image–text task through `kd_engine.run.train`: a one-epoch TinyCLIP run with weight
inheritance records per-pair ranks and affinity KLs, zero-shot and R@1 metrics for student and
teacher, and the two affinity matrices of one test batch; the Instances page shows them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest_dashboard import REPO, open_page
from kd_engine.config import load_raw, validate
from kd_engine.errors import ConfigError
from kd_engine.store import open_run
from kd_engine.tasks.image_text import caption_ranks, in_batch_ranks


def _raw(base: Path, **changes) -> dict:
    raw = load_raw(REPO / "configs" / "tinyclip_digits.yaml")
    raw.update(epochs=1, runs_dir=str(base / "runs"), cache_dir=str(base / "cache"), device="cpu", **changes)
    raw["data"]["batch_size"] = 128
    raw["distill"]["params"].update(teacher_epochs=1, inherit=True)
    raw["record"] = {"tensorboard": False, "attention_maps": 0, "feature_probe_size": 8}
    return raw


@pytest.fixture(scope="module")
def tinyclip_run(tmp_path_factory) -> tuple[Path, str]:
    from kd_engine.run import train

    base = tmp_path_factory.mktemp("runs_image_text")
    run_dir = train(validate(_raw(base), "image-text test"), distributed=False)
    return base / "runs", Path(run_dir).name


def test_ranks_are_counted_against_distinct_captions():
    import torch

    aff = torch.tensor([[0.9, 0.1, 0.95], [0.2, 0.5, 0.1], [0.3, 0.3, 0.3]])
    assert in_batch_ranks(aff).tolist() == [2, 1, 1]  # ties do not count against a pair
    image = torch.eye(3)[[0, 1, 1]]
    tokens = torch.tensor([[0, 10, 13, 16], [1, 10, 13, 16], [1, 10, 13, 16]])  # pairs 1 and 2: one caption
    text_of = lambda t: torch.eye(3)[t[:, 0]]  # caption "digit d" -> unit vector d
    assert caption_ranks(image, text_of, tokens).tolist() == [1, 1, 1]


def test_run_records_ranks_affinities_and_inherited_weights(tinyclip_run):
    runs_dir, run_id = tinyclip_run
    run = open_run(runs_dir / run_id)
    meta = run.meta()
    assert meta["task"] == "image_text" and meta["inherit"] and meta["distill_scale"] == 20.0
    assert meta["inherited"]["image.blocks.1.attn.qkv.weight"] == "image.blocks.2.attn.qkv.weight"
    final = run.final_metrics()
    for role in ("student", "teacher"):
        for key in ("zero_shot_acc", "r1", "mean_rank"):
            assert np.isfinite(final[f"test/{role}_{key}"])
    rows = run.instances(split="train")
    assert {"rank", "teacher_rank", "affinity_kl", "student_loss"} <= set(rows.columns)
    assert (rows["affinity_kl"] >= -1e-5).all() and rows["rank"].between(1, 128).all()
    test = run.instances(split="test")
    r1 = float((test["student_rank"] == 1).mean())
    assert r1 == pytest.approx(final["test/student_r1"])
    acc = float((test["student_zero_shot"] == test["label"]).mean())
    assert acc == pytest.approx(final["test/student_zero_shot_acc"])
    student, teacher = run.load_artifact("affinity/test/student"), run.load_artifact("affinity/test/teacher")
    assert student.shape == teacher.shape == (16, 16) and np.abs(student).max() <= 1 + 1e-5
    first = test.set_index("instance_id")
    ids = json.loads(run.artifacts(kind="affinity")["meta"].iloc[0])["instance_ids"]
    np.testing.assert_allclose(np.diag(student), first.loc[ids, "student_positive"].to_numpy(), atol=1e-5)


def test_wrong_data_or_student_is_one_clear_line(tmp_path):
    from kd_engine.run import train

    raw = _raw(tmp_path)
    raw["data"] = {"name": "digits"}
    with pytest.raises(ConfigError, match="data.name: method tinyclip trains image-text pairs"):
        train(validate(raw, "bad data"), distributed=False)


def test_instances_page_shows_both_affinity_matrices_and_ranks(tinyclip_run, monkeypatch):
    runs_dir, run_id = tinyclip_run
    at = open_page(runs_dir, run_id, "instances", monkeypatch)
    at.radio(key="inst_split").set_value("test").run()
    assert not at.exception, [e.value for e in at.exception]
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    matrices = [s for s in specs if "affinity" in ((s["layout"].get("title") or {}).get("text", "")) or
                "cosines of one test batch" in ((s["layout"].get("title") or {}).get("text", ""))]
    assert matrices, [(s["layout"].get("title") or {}).get("text") for s in specs]
    heatmaps = [t for t in matrices[0]["data"] if t["type"] == "heatmap"]
    assert [a["text"] for a in matrices[0]["layout"]["annotations"]] == ["teacher", "student"] and len(heatmaps) == 2
    assert any("image→text rank" in ((s["layout"].get("title") or {}).get("text", "")) for s in specs)


def test_compare_page_shows_teacher_and_student_of_the_run(tinyclip_run, monkeypatch):
    runs_dir, run_id = tinyclip_run
    at = open_page(runs_dir, run_id, "compare", monkeypatch)
    titles = [(json.loads(c.proto.spec)["layout"].get("title") or {}).get("text", "") for c in at.get("plotly_chart")]
    assert "teacher and student cosines of one test batch" in titles
    assert any(t.startswith("each test image's caption rank") for t in titles)
    final = open_run(runs_dir / run_id).final_metrics()
    shown = {m.label: m.value for m in at.metric}
    assert shown["student image→text R@1"] == f"{final['test/student_r1']:.4f}"

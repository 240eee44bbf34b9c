"""SAM (aligned cross-modal distillation from a panorama teacher into an echo student): known
answers for the matching losses, the room ray caster and the echo delays, the query aligner's
attention, the direct-KD baseline's resize, the task metrics against NumPy/scikit-learn on a
tiny real run, and one-line config errors."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import jaccard_score

from kd_engine.config import load_raw, validate
from kd_engine.data.room_echoes import MAX_RANGE, SPEED_OF_SOUND, echoes, ray_depths
from kd_engine.errors import ConfigError
from kd_engine.losses.alignment import aligned_feature_mse, multilayer_matching
from kd_engine.models.echo_cnn import QueryAligner
from kd_engine.tasks.echo_depth import abs_rel

REPO = Path(__file__).resolve().parents[1]


# -- losses -----------------------------------------------------------------------------------------
def test_matching_is_zero_for_identical_maps_and_hand_computed_otherwise():
    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (B=1, C=2, A=2)
    assert aligned_feature_mse(s, s.clone(), reduction="none").tolist() == [0.0]
    assert aligned_feature_mse(s, torch.zeros_like(s)).item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    # mask: all weight on azimuth 1 -> mean over channels of (2² + 4²)
    mask = torch.tensor([[0.0, 1.0]])
    assert aligned_feature_mse(s, torch.zeros_like(s), mask).item() == pytest.approx((4 + 16) / 2)
    two = multilayer_matching([s, 2 * s], [torch.zeros_like(s), s], weights=[1.0, 0.5], reduction="sum")
    assert two.item() == pytest.approx(7.5 + 0.5 * 7.5)


def test_matching_per_sample_equals_numpy_and_leaves_the_teacher_alone():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4, 5))
    c, d = rng.normal(size=(3, 2, 5)), rng.normal(size=(3, 2, 5))
    student = [torch.tensor(a, requires_grad=True), torch.tensor(c)]
    teacher = [torch.tensor(b, requires_grad=True), torch.tensor(d)]
    got = multilayer_matching(student, teacher, reduction="none")
    expected = ((a - b) ** 2).mean((1, 2)) + ((c - d) ** 2).mean((1, 2))
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-6)
    assert multilayer_matching(student, teacher).item() == pytest.approx(expected.mean())
    got.sum().backward()
    assert student[0].grad is not None and teacher[0].grad is None  # the teacher is a target


def test_matching_refuses_mismatched_maps():
    with pytest.raises(ValueError, match="same shape|one shape"):
        aligned_feature_mse(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="one teacher map"):
        multilayer_matching([torch.zeros(1, 1, 2)], [])
    with pytest.raises(ValueError, match="reduction"):
        aligned_feature_mse(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), reduction="avg")


# -- rooms and echoes -----------------------------------------------------------------------------
def test_ray_depths_hit_walls_and_boxes_at_hand_computed_distances():
    angles = np.array([0.0, math.pi / 2, math.pi, 3 * math.pi / 2, math.pi / 4])
    depth, label = ray_depths(4.0, 3.0, np.array([1.0, 1.0]), np.zeros((0, 4)), angles)
    np.testing.assert_allclose(depth, [3.0, 2.0, 1.0, 1.0, 2 * math.sqrt(2)], atol=1e-12)
    assert label.tolist() == [0, 0, 0, 0, 0]
    box = np.array([[2.0, 0.5, 2.5, 1.5]])  # in front of the listener along +x
    depth, label = ray_depths(4.0, 3.0, np.array([1.0, 1.0]), box, angles)
    np.testing.assert_allclose(depth, [1.0, 2.0, 1.0, 1.0, 2 * math.sqrt(2)], atol=1e-12)
    assert label.tolist() == [1, 0, 0, 0, 0]


def test_an_echo_arrives_at_the_round_trip_delay_louder_in_the_nearer_ear():
    p = {"time_bins": 256, "spike_width": 1.0, "echo_noise": 0.0, "gain_asymmetry": 0.7}
    bin_seconds = 2 * MAX_RANGE / SPEED_OF_SOUND / 256
    itd = 0.18 / SPEED_OF_SOUND / bin_seconds  # ears 0.18 m apart, source at 90°: the whole spacing
    for d in (1.5, 4.0):
        e = echoes(np.array([d]), np.array([0]), np.array([math.pi / 2]), np.random.default_rng(0), p)
        delay = 2 * d / SPEED_OF_SOUND / bin_seconds  # = d / MAX_RANGE · 256 bins
        assert abs(int(e[0].argmax()) - (delay - itd / 2)) <= 0.5  # the left ear hears it first
        assert abs(int(e[1].argmax()) - (delay + itd / 2)) <= 0.5
        assert e[0].max() > e[1].max()  # a source on the left (θ = 90°) is louder in the left ear


def test_query_aligner_gives_one_attention_row_per_azimuth():
    aligner = QueryAligner(token_dim=6, tokens=8, dim=4, queries=16)
    tokens = torch.randn(3, 6, 8)
    from kd_engine.models import feature_taps

    with feature_taps(aligner, ["probs", "out"]) as taps:
        out = aligner(tokens)
    assert out.shape == (3, 4, 16) and taps["probs"].shape == (3, 16, 8)
    torch.testing.assert_close(taps["probs"].sum(-1), torch.ones(3, 16))


def test_abs_rel_by_hand():
    np.testing.assert_allclose(abs_rel(np.array([[2.0, 4.0]]), np.array([[3.0, 3.0]])), [(0.5 + 0.25) / 2])


# -- a tiny real run ----------------------------------------------------------------------------------
def tiny(tmp: Path, **changes) -> dict:
    raw = load_raw(REPO / "configs" / "sam_echoes.yaml")
    raw.update(epochs=1, runs_dir=str(tmp / "runs"), cache_dir=str(tmp / "cache"), device="cpu")
    raw["data"].update(params={"rooms": 48, "test_rooms": 16}, batch_size=16)
    raw["teacher"]["train"]["epochs"] = 1
    raw["record"] = {"tensorboard": False, "attention_maps": 16}
    raw.update(changes)
    return raw


@pytest.fixture(scope="module")
def sam_run(tmp_path_factory):
    from kd_engine.run import train
    from kd_engine.store import open_run

    return open_run(train(validate(tiny(tmp_path_factory.mktemp("sam")), "sam test"), distributed=False))


def test_run_records_alignment_per_room_and_metrics_match_numpy(sam_run):
    train_rows = sam_run.instances(split="train")
    assert {"align_loss", "align_stage2", "student_loss", "teacher_loss", "depth_mse"} <= set(train_rows)
    assert len(train_rows) == 32 and (train_rows["align_loss"] > 0).all()
    test = sam_run.instances(split="test").sort_values("instance_id")
    final = sam_run.final_metrics()
    true = sam_run.load_artifact("echo/test/true_depth").astype(float)
    pred = sam_run.load_artifact("echo/test/student_depth").astype(float)
    labels = sam_run.load_artifact("echo/test/true_label")
    guess = sam_run.load_artifact("echo/test/student_label")
    assert true.shape == (16, 64)  # every test room is a probe here
    assert final["test/student_rmse"] == pytest.approx(np.sqrt(((pred - true) ** 2).mean()), rel=1e-5)
    assert final["test/student_abs_rel"] == pytest.approx((np.abs(pred - true) / true).mean(), rel=1e-5)
    miou = jaccard_score(labels.ravel(), guess.ravel(), average="macro", labels=[0, 1], zero_division=0)
    present = len(set(labels.ravel()) | set(guess.ravel()))
    if present == 2:
        assert final["test/student_mIoU"] == pytest.approx(miou, rel=1e-6)
    np.testing.assert_allclose(test["student_rmse"], np.sqrt(((pred - true) ** 2).mean(1)), rtol=1e-5)
    assert final["test/align_loss"] == pytest.approx(test["align_loss"].mean(), rel=1e-6)
    attention = sam_run.load_artifact("echo/test/attention_stage2")
    assert attention.shape == (16, 64, 32)
    np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-4)
    assert sam_run.meta()["task"] == "echo_depth" and sam_run.meta()["aligned"] == ["stage2"]


def test_config_errors_name_the_field(tmp_path):
    from kd_engine.run import train

    plain = tiny(tmp_path, method="sam")
    plain["student"]["params"]["aligned"] = []
    with pytest.raises(ConfigError, match="teacher_layers"):
        train(validate(plain, "t"), distributed=False)
    bad = tiny(tmp_path)
    bad["data"]["params"] = {"rooms": 10, "test_rooms": 10}
    with pytest.raises(ConfigError, match="data.params.test_rooms"):
        train(validate(bad, "t"), distributed=False)
    wrong = tiny(tmp_path, method="direct_kd")
    wrong["distill"] = {"params": {"student_layer": "nope"}}
    with pytest.raises(ConfigError, match="student_layer"):
        train(validate(wrong, "t"), distributed=False)


def test_direct_kd_resizes_the_time_axis_onto_azimuth_and_lambda_zero_distils_nothing(tmp_path):
    from kd_engine.models import build_model
    from kd_engine.methods.echo_base import DirectKD
    from kd_engine.methods.sam import SAM

    cfg = validate(tiny(tmp_path, method="direct_kd", distill={"params": {}}), "t")
    student = build_model(cfg.student, (5, 256), 2)
    teacher = build_model(cfg.teacher, (5, 256), 2)
    method = DirectKD(cfg, student, teacher, (5, 256))
    s_map = torch.randn(2, 32, 32)  # a stage-2 map: 32 echo-time tokens
    losses, values = method.distill({"stage2": s_map}, {"layer2": torch.zeros(2, 32, 64)})
    resized = torch.nn.functional.interpolate(s_map, size=64, mode="linear", align_corners=False)
    expected = method.adapter(resized).pow(2).mean((1, 2))
    torch.testing.assert_close(values["direct_loss"], expected)
    control = validate(tiny(tmp_path, distill={"params": {"teacher_layers": ["layer2"], "weight": 0.0}}), "t")
    sam = SAM(control, build_model(control.student, (5, 256), 2), teacher, (5, 256))
    x = torch.randn(4, 5, 256)
    out = sam(x, torch.zeros(4, 64, dtype=torch.long), torch.ones(4, 64))
    assert out.losses["sam"].item() == 0.0 and (out.per_sample["align_loss"] > 0).all()

"""CS-MTL-KD's parts: the Cauchy–Schwarz divergence on its dense axes (known answers), the edge
and multi-task metrics (against scikit-learn and hand-computed values), the edge map of the digit
scenes, and the method on a tiny multi-task pair (its terms, adapters and alternation)."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from kd_engine.config import validate
from kd_engine.data.segmentation import label_edges
from kd_engine.dense_metrics import delta_mtl, edge_f1, miou, rmse
from kd_engine.errors import ConfigError
from kd_engine.losses.dense import channel_cs, pixel_cs, pixel_cs_map
from kd_engine.losses.logit import cs_divergence
from kd_engine.models import build_model
from kd_engine.tasks import task_for
from kd_engine.trainers import runtime


def _maps(seed: int, shape=(2, 3, 4, 5)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- the divergence ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [pixel_cs, channel_cs])
def test_cs_is_zero_on_identical_maps_and_symmetric(fn):
    a, b = _maps(0), _maps(1)
    assert torch.allclose(fn(a, a.clone(), reduction="none"), torch.zeros(2), atol=1e-6)
    ab, ba = fn(a, b, reduction="none"), fn(b, a, reduction="none")
    assert torch.allclose(ab, ba, atol=1e-6) and (ab > 1e-4).all()
    assert fn(a, b, temperature=4.0, reduction="none").shape == (2,)


def test_cs_is_scale_invariant_in_its_probability_arguments():
    p = torch.tensor([[0.2, 0.3, 0.5]])
    q = torch.tensor([[0.6, 0.1, 0.3]])
    from kd_engine.losses.logit import _cs_from_probs
    assert torch.allclose(_cs_from_probs(p, q), _cs_from_probs(7.0 * p, 0.25 * q), atol=1e-6)


def test_pixel_cs_matches_a_hand_computed_case():
    # one image, 2 classes, 1x2 pixels; softmax of (0, log 3) = (1/4, 3/4), of (0, 0) = (1/2, 1/2)
    student = torch.tensor([[[[0.0, 0.0]], [[math.log(3), 0.0]]]])   # pixel 0: (1/4, 3/4), pixel 1: (1/2, 1/2)
    teacher = torch.zeros(1, 2, 1, 2)                                # (1/2, 1/2) everywhere
    # pixel 0: −log(1/8 + 3/8) + ½ log(1/16 + 9/16) + ½ log(1/2) = log 2 + ½ log(5/8) − ½ log 2
    expected0 = math.log(2) + 0.5 * math.log(10 / 16) + 0.5 * math.log(0.5)
    got = pixel_cs_map(student, teacher)
    assert got[0, 0, 0].item() == pytest.approx(expected0, abs=1e-6) and got[0, 0, 1].item() == pytest.approx(0, abs=1e-6)
    assert pixel_cs(student, teacher).item() == pytest.approx(expected0 / 2, abs=1e-6)


def test_pixel_cs_on_one_pixel_is_the_classification_cs():
    s, t = _maps(2, (3, 5)), _maps(3, (3, 5))
    dense = pixel_cs(s[:, :, None, None], t[:, :, None, None], temperature=2.0, reduction="none")
    assert torch.allclose(dense, cs_divergence(s, t, temperature=2.0, reduction="none"), atol=1e-6)


def test_channel_cs_compares_spatial_distributions_per_channel():
    s, t = _maps(4, (2, 1, 3, 3)), _maps(5, (2, 1, 3, 3))
    p, q = torch.softmax(t.flatten(2) / 4, 2)[:, 0], torch.softmax(s.flatten(2) / 4, 2)[:, 0]
    expected = -torch.log((p * q).sum(1)) + 0.5 * torch.log((p * p).sum(1)) + 0.5 * torch.log((q * q).sum(1))
    assert torch.allclose(channel_cs(s, t, temperature=4.0, reduction="none"), expected, atol=1e-5)
    assert channel_cs(s, t + 3.0, reduction="sum").item() == pytest.approx(channel_cs(s, t, reduction="sum").item(), abs=1e-5)


# -- metrics ---------------------------------------------------------------------------------------
def test_miou_and_rmse_on_hand_built_maps():
    true = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    # class 0: TP 1, FP 1, FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2
    assert miou(true, pred, 3) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert rmse(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 2.0], [3.0, 6.0]])) == pytest.approx(1.0)


def test_edge_f1_agrees_with_scikit_learn():
    rng = np.random.default_rng(0)
    true, prob = rng.random((3, 6, 6)) > 0.7, rng.random((3, 6, 6))
    expected = f1_score(true.ravel(), prob.ravel() >= 0.5)
    assert edge_f1(true, prob) == pytest.approx(expected)
    assert math.isnan(edge_f1(np.zeros((2, 2)), np.zeros((2, 2))))


def test_delta_mtl_is_the_mean_signed_relative_gain():
    base = {"miou": 0.5, "rmse": 0.2, "edge_f1": 0.4}
    model = {"miou": 0.55, "rmse": 0.25, "edge_f1": 0.4}
    # (+0.10 − 0.25 + 0) / 3
    assert delta_mtl(model, base, {"rmse"}) == pytest.approx(-0.05)
    assert delta_mtl(base, base, {"rmse"}) == 0.0
    with pytest.raises(ValueError, match="edge_f1"):
        delta_mtl({"miou": 0.5, "rmse": 0.2}, base)


def test_label_edges_marks_both_sides_of_each_boundary():
    label = np.zeros((1, 3, 4), dtype=np.int64)
    label[0, 1, 1] = 2
    expected = np.array([[0, 1, 0, 0], [1, 1, 1, 0], [0, 1, 0, 0]], dtype=np.float32)
    assert np.array_equal(label_edges(label)[0], expected)


# -- the method ------------------------------------------------------------------------------------
def _config(**params):
    heads = {"depth_head": True, "edge_head": True}
    return validate({"name": "mtl", "device": "cpu", "threads": 1, "epochs": 1, "seed": 0, "method": "cs_mtl_kd",
                     "data": {"name": "digit_scenes", "batch_size": 8,
                              "params": {"n_train": 8, "n_val": 4, "n_test": 4, "edges": True}},
                     "teacher": {"name": "fcn", "params": {"width": 4, **heads}},
                     "student": {"name": "fcn", "params": {"width": 2, **heads}},
                     "distill": {"params": params}})


def _distiller(cfg):
    task_cls = task_for(cfg.data.name)
    data = task_cls.build_data(cfg)
    task = task_cls(cfg, data, torch.device("cpu"), runtime.SINGLE, contextlib.nullcontext)
    torch.manual_seed(0)
    student = build_model(cfg.student, data.input_shape, data.num_classes)
    teacher = build_model(cfg.teacher, data.input_shape, data.num_classes)
    return task, task_cls.methods.get("cs_mtl_kd")(cfg, student, teacher, data.input_shape)


def test_method_records_intra_and_inter_terms_and_trains_the_adapters():
    task, distiller = _distiller(_config(alt_weight=0.5))
    assert distiller.tasks == ["seg", "depth", "edges"]
    assert set(distiller.adapters) == {f"{a}_to_{b}" for a in distiller.tasks for b in distiller.tasks if a != b}
    assert distiller.adapters["seg_to_depth"].in_channels == 11 and distiller.adapters["depth_to_seg"].out_channels == 11
    batch = next(iter(task.batches(0)))
    out = distiller(*batch.inputs, **batch.kwargs)
    for name in ("intra_seg", "intra_depth", "intra_edges", "inter_seg", "inter_depth", "inter_edges", "distill_loss",
                 "student_edge_bce"):
        assert out.per_sample[name].shape == (8,), name
    expected = sum(out.per_sample[f"intra_{t}"] for t in distiller.tasks) \
        + 0.5 * sum(out.per_sample[f"inter_{t}"] for t in distiller.tasks)
    assert torch.allclose(out.per_sample["distill_loss"], expected, atol=1e-5)
    out.total.backward()
    assert distiller.adapters["seg_to_depth"].weight.grad.abs().sum() > 0


def test_alternate_matching_switches_terms_by_step_and_kl_is_selectable():
    task, distiller = _distiller(_config(alt_weight=0.5, match="alternate", divergence="kl", temperature=4.0))
    batch = next(iter(task.batches(0)))
    even = distiller(*batch.inputs, **batch.kwargs).per_sample
    assert torch.allclose(even["distill_loss"], sum(even[f"intra_{t}"] for t in distiller.tasks), atol=1e-5)
    distiller.after_step(0, 0)
    odd = distiller(*batch.inputs, **batch.kwargs).per_sample
    assert torch.allclose(odd["distill_loss"], 0.5 * sum(odd[f"inter_{t}"] for t in distiller.tasks), atol=1e-5)


def test_bad_settings_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="distill.params.divergence"):
        _distiller(_config(divergence="js"))
    with pytest.raises(ConfigError, match="distill.params.temperature"):
        _distiller(_config(temperature=0))


def test_dense_evaluation_scores_edges_against_scikit_learn():
    task, distiller = _distiller(_config())
    ev = task.evaluate("test", distiller.student, distiller.teacher, final=True)
    arts = {a.name.split("/")[-1]: a.array for a in ev.artifacts}
    assert {"true_edges", "student_edges", "teacher_edges", "edges_disparity"} <= set(arts)
    true = task.data.test.maps["edges"].numpy()
    assert np.array_equal(arts["true_edges"], true)
    for role in ("student", "teacher"):
        expected = f1_score(true.ravel() > 0.5, arts[f"{role}_edges"].ravel() >= 0.5, zero_division=np.nan)
        got = ev.metrics[f"test/{role}_edge_f1"]
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)
    assert arts["edges_disparity"] == pytest.approx(np.abs(arts["teacher_edges"] - arts["student_edges"]))

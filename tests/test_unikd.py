"""UniKD's parts and methods on tiny untrained torchvision detectors: the knowledge extractor's
outputs, the teacher records against a direct teacher call, stage 1 fitting the teacher's
detections, stage 2's losses and gradients (the extractor frozen, the adapter and the student
trained), the per-image and per-box rows, the feature-imitation baseline's zero on identical
maps, the attention grid by hand, and one-line config errors."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kd_engine.errors import ConfigError
from kd_engine.experiment import arm_config
from kd_engine.methods.fpn_mimic import FPNMimic
from kd_engine.methods.unikd import UniKD
from kd_engine.models.detection import build_detector, freeze_batchnorm
from kd_engine.parts.knowledge_extractor import KnowledgeExtractor, TeacherRecords
from workbench.figures.query_attention import attention_on_grid

SIZE = 64


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on the shared machine extra threads only spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(tmp_path, method: str, params: dict, teacher: str = "fasterrcnn"):
    raw = {"name": "t", "epochs": 1, "data": {"name": "scenes", "batch_size": 2,
                                               "params": {"n_train": 4, "n_val": 0, "n_test": 1, "image_size": SIZE}},
           "student": {"name": "fcos", "params": {"width": 4, "fpn_channels": 8}},
           "teacher": {"name": teacher, "params": {"width": 4, "fpn_channels": 16}},
           "method": method, "distill": {"params": params}}
    return arm_config(raw, {}, 0, tmp_path / "runs", tmp_path / "cache")


def _models(teacher: str = "fasterrcnn"):
    torch.manual_seed(0)
    student = build_detector("fcos", SIZE, 4, width=4, fpn_channels=32)
    return student, build_detector(teacher, SIZE, 4, width=4, fpn_channels=32, **(
        {"box_score_thresh": 0.0} if teacher == "fasterrcnn" else {"score_thresh": 0.0}))


def _batch(n: int = 2):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([1 + k % 3]),
                "image_id": 11 + k} for k in range(n)]
    return images, targets


def test_extractor_shapes_and_attention():
    ake = KnowledgeExtractor(16, 4, levels=2, queries=5, dim=8, heads=2)
    e, logits, boxes, attention = ake([torch.randn(3, 16, 4, 4), torch.randn(3, 16, 2, 2)], attention=True)
    assert e.shape == (3, 5, 8) and logits.shape == (3, 5, 4) and boxes.shape == (3, 5, 4)
    assert attention.shape == (3, 5, 20) and torch.allclose(attention.sum(-1), torch.ones(3, 5))
    assert (boxes[..., 2:] >= boxes[..., :2]).all() and boxes.min() >= 0 and boxes.max() <= 1


def test_attention_on_grid_by_hand():
    attention = np.array([[0.1, 0.2, 0.3, 0.0, 0.4]])  # a 2×2 map then a 1×1 map
    grid = attention_on_grid(attention, [[2, 2], [1, 1]])
    assert np.allclose(grid, [[[0.5, 0.6], [0.7, 0.4]]])
    with pytest.raises(ValueError, match="tokens"):
        attention_on_grid(attention, [[2, 2]])


def test_teacher_records_match_a_direct_call():
    _, teacher = _models()
    teacher.eval()
    images, targets = _batch()
    records = TeacherRecords(teacher, ["p3", "p4"], top_k=3, min_score=0.0)
    maps, dets = records(images, [t["image_id"] for t in targets])
    assert [m.shape for m in maps] == [(2, 32, 8, 8), (2, 32, 4, 4)]
    with torch.no_grad():
        direct = teacher(images)
    for d, ref in zip(dets, direct):
        top = ref["scores"].argsort(descending=True)[:3]
        assert torch.allclose(d["boxes"] * SIZE, ref["boxes"][top], atol=1e-4)
        assert torch.equal(d["labels"], ref["labels"][top])
    again = records(images[::-1], [t["image_id"] for t in targets][::-1])[0]
    assert torch.equal(again[0][0], maps[0][1])  # served from the records, in the batch's order


def test_unikd_stage1_fits_and_stage2_trains_student_and_adapter_only(tmp_path):
    student, teacher = _models()
    cfg = _cfg(tmp_path, "unikd", {"queries": 4, "dim": 16, "heads": 2, "min_score": 0.0, "pretrain_epochs": 20,
                                   "pretrain_lr": 0.01, "probe_images": 2})
    method = UniKD(cfg, student, teacher, (3, SIZE, SIZE))
    images, targets = _batch()
    items = [(im, t, t["image_id"]) for im, t in zip(images, targets)]
    task = SimpleNamespace(data=SimpleNamespace(train=items), device=torch.device("cpu"))
    (phase,) = method.phases(task)
    losses = []
    for batch in phase.batches():
        out = phase.step(batch)
        phase.optimizer.zero_grad()
        out.total.backward()
        phase.optimizer.step()
        losses.append(out.total.item())
    assert losses[-1] < 0.5 * losses[0]  # the extractor learns the teacher's detections
    report = phase.finish()
    assert report.artifacts[0]["array"].shape == (2, 4, 8 * 8 + 4 * 4 + 2 * 2)
    assert not any(p.requires_grad for p in method.extractor.parameters())
    method.train()
    out = method(images, targets)
    assert set(out.losses) == {"task", "ake_set", "ake_embed"} and all(torch.isfinite(v) for v in out.losses.values())
    out.total.backward()
    assert all(p.grad is not None for p in method.adapters.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    rows = out.rows()
    image_rows, box_rows = rows["query"] < 0, rows["query"] >= 0
    assert sorted(rows["instance_id"][image_rows].tolist()) == [11, 12]
    n_boxes = sum(len(method.records.detections[i]["labels"]) for i in (11, 12))
    assert box_rows.sum() == n_boxes and np.all(np.isfinite(rows["set_total"][image_rows]))
    assert np.all((rows["match_iou"][box_rows] >= 0) & (rows["match_iou"][box_rows] <= 1))
    assert method.trainable_parameters() and not set(map(id, method.trainable_parameters())) & set(
        map(id, method.extractor.parameters()))


def test_fpn_mimic_is_zero_between_identical_detectors(tmp_path):
    student, _ = _models()
    teacher = copy.deepcopy(student)
    method = FPNMimic(_cfg(tmp_path, "fpn_mimic", {}, teacher="fcos"), student, teacher, (3, SIZE, SIZE))
    for adapter in method.adapters.values():  # identity 1×1 adapters
        adapter.weight.data.copy_(torch.eye(32)[:, :, None, None])
        adapter.bias.data.zero_()
    method.train()
    freeze_batchnorm(student)  # the teacher's eval-mode maps, so the two passes are the same function
    out = method(*_batch())
    assert out.losses["mimic"].item() == pytest.approx(0.0, abs=1e-10)
    assert np.allclose(out.rows()["mimic_mse"], 0.0, atol=1e-10)


@pytest.mark.parametrize("method, params, match", [
    ("unikd", {"levels": ["p6"]}, "distill.params.levels"),
    ("fpn_mimic", {"levels": ["p2"]}, "distill.params.levels"),
    ("unikd", {"querys": 4}, "unknown parameter 'querys'"),
    ("unikd", {"queries": 0}, "distill.params.queries"),
])
def test_config_errors_are_one_line(tmp_path, method, params, match):
    student, teacher = _models()
    with pytest.raises(ConfigError, match=match):
        {"unikd": UniKD, "fpn_mimic": FPNMimic}[method](_cfg(tmp_path, method, params), student, teacher,
                                                         (3, SIZE, SIZE))

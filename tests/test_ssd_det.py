"""SSD-Det and the box-refinement task: the top-k weighted merge, the MIL bag loss, the delta L1
and the IoU-confidence loss against hand or NumPy values, proposal bags and the box-noise
injector against their definitions, and a tiny run of the shipped config through
`kd_engine.run.train` whose recorded pseudo-box IoU is recomputed from the recorded rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from kd_engine.config import load_raw, validate
from kd_engine.data import build_data
from kd_engine.data.shape_scenes import OBJECT_STRIDE, draw_shape, noisy_boxes
from kd_engine.errors import ConfigError
from kd_engine.losses.box_refine import delta_l1, iou_confidence_loss, mil_bag_loss
from kd_engine.parts.box_bags import decode, encode, minmax_per_bag, paired_iou, proposal_bag, topk_weighted_merge
from kd_engine.tasks import task_for


# -- the top-k weighted merge ----------------------------------------------------------------------
def test_topk_merge_hand_case():
    # bag of 3; top-2 by weight are proposals 2 (w 0.5) and 0 (w 0.3):
    # x0 = (0.5*4 + 0.3*0) / 0.8 = 2.5; y0 = (0.5*2 + 0.3*0)/0.8 = 1.25; x1 = (0.5*12+0.3*10)/0.8 = 11.25;
    # y1 = (0.5*10 + 0.3*10)/0.8 = 10
    bag = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 200.0, 200.0], [4.0, 2.0, 12.0, 10.0]]])
    merged, chosen = topk_weighted_merge(bag, torch.tensor([[0.3, 0.2, 0.5]]), k=2)
    assert torch.allclose(merged, torch.tensor([[2.5, 1.25, 11.25, 10.0]]))
    assert chosen.tolist() == [[2, 0]]


def test_topk_merge_against_numpy_and_its_identities():
    g = torch.Generator().manual_seed(0)
    bag = torch.rand((5, 10, 4), generator=g) * 30
    w = torch.rand((5, 10), generator=g)
    merged, _ = topk_weighted_merge(bag, w, k=7)
    bn, wn = bag.numpy(), w.numpy()
    for i in range(5):
        top = np.argsort(-wn[i])[:7]
        expected = (wn[i, top, None] * bn[i, top]).sum(0) / wn[i, top].sum()
        assert np.allclose(merged[i].numpy(), expected, atol=1e-4)
    same = bag[:, :1].expand(-1, 10, -1)  # identical proposals merge to themselves
    assert torch.allclose(topk_weighted_merge(same, w, 7)[0], bag[:, 0], atol=1e-5)
    # k = 1 picks the argmax proposal; zero weights fall back to the plain mean of the top-k
    assert torch.allclose(topk_weighted_merge(bag, w, 1)[0], bag[torch.arange(5), w.argmax(1)])
    assert torch.allclose(topk_weighted_merge(bag, torch.zeros(5, 10), 10)[0], bag.mean(1), atol=1e-5)


# -- losses -----------------------------------------------------------------------------------------
def test_mil_bag_loss_hand_case_and_reductions():
    # one object, bag of 2, K = 2 (+ background). Class logits give probabilities by hand:
    # proposal 0: logits (0, 0, -inf) -> c = (0.5, 0.5, 0); proposal 1: (log 3, 0, 0) -> c = (0.6, 0.2, 0.2)
    # instance logits (0, log 3) -> s = (0.25, 0.75). Bag score S = (0.25*0.5 + 0.75*0.6, 0.25*0.5 + 0.75*0.2)
    # = (0.575, 0.275); label 0: loss = -log 0.575 - log(1 - 0.275)
    cls = torch.tensor([[[0.0, 0.0, -1e9], [np.log(3.0), 0.0, 0.0]]])
    ins = torch.tensor([[0.0, np.log(3.0)]])
    expected = -np.log(0.575) - np.log(0.725)
    loss = mil_bag_loss(cls, ins, torch.tensor([0]), reduction="none")
    assert loss.shape == (1,) and abs(loss.item() - expected) < 1e-5
    two = mil_bag_loss(cls.repeat(2, 1, 1), ins.repeat(2, 1), torch.tensor([0, 1]), reduction="none")
    assert abs(two[1].item() - (-np.log(0.275) - np.log(0.425))) < 1e-5
    assert torch.isclose(mil_bag_loss(cls.repeat(2, 1, 1), ins.repeat(2, 1), torch.tensor([0, 1]), reduction="sum"),
                         two.sum())
    with pytest.raises(ValueError, match="expected cls_logits"):
        mil_bag_loss(cls, ins[:, :1], torch.tensor([0]))


def test_instance_softmax_runs_over_the_bag_not_the_classes():
    # a bag whose proposals are identical gives S = c whatever the instance logits
    cls = torch.tensor([[[2.0, 0.0, 1.0]] * 4])
    c = cls[0, 0].softmax(0)
    loss = mil_bag_loss(cls, torch.randn(1, 4), torch.tensor([1]), reduction="none")
    assert abs(loss.item() - (-np.log(c[1].item()) - np.log(1 - c[0].item()))) < 1e-5


def test_delta_l1_and_iou_confidence_hand_values():
    pred, target = torch.zeros(2, 2, 4), torch.ones(2, 2, 4)
    target[1] = -3.0
    assert torch.allclose(delta_l1(pred, target, reduction="none"), torch.tensor([1.0, 3.0]))
    assert torch.allclose(delta_l1(target, target, reduction="none"), torch.zeros(2))
    # IoU 1 -> target 1; IoU 0.5 -> 0; smooth L1 with beta 1: |d| < 1 -> 0.5 d^2, else |d| - 0.5
    iou = torch.tensor([[1.0, 0.5]])
    pred = torch.tensor([[0.5, 2.0]])  # d = -0.5 -> 0.125; d = 2 -> 1.5
    assert torch.allclose(iou_confidence_loss(pred, iou, reduction="none"), torch.tensor([(0.125 + 1.5) / 2]))


# -- bags, deltas, IoU ----------------------------------------------------------------------------
def test_proposal_bag_respects_iou_scale_and_count():
    boxes = torch.tensor([[4.0, 4.0, 14.0, 20.0], [10.0, 2.0, 26.0, 10.0]])
    bag = proposal_bag(boxes, count=10, min_iou=0.3, generator=torch.Generator().manual_seed(1))
    assert bag.shape == (2, 10, 4)
    for i in range(2):
        assert (box_iou(bag[i], boxes[i:i + 1]) >= 0.3 - 1e-6).all()
        wh = (bag[i, :, 2:] - bag[i, :, :2]) / (boxes[i, 2:] - boxes[i, :2])
        assert ((wh > 0.7 - 1e-5) & (wh < 1.3 + 1e-5)).all()
    impossible = proposal_bag(boxes, count=4, jitter=5.0, min_iou=0.99, generator=torch.Generator().manual_seed(1))
    assert torch.equal(impossible, boxes[:, None].expand(-1, 4, -1))  # filled with the box itself


def test_deltas_round_trip_and_paired_iou_matches_torchvision():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(6, 2, generator=g) * 10
    p = torch.cat([a, a + 2 + torch.rand(6, 2, generator=g) * 10], 1)
    t = p + torch.randn(6, 4, generator=g)
    assert torch.allclose(decode(p, encode(p, t)), t, atol=1e-4)
    assert torch.allclose(paired_iou(p, t), box_iou(p, t).diagonal(), atol=1e-6)
    assert torch.allclose(minmax_per_bag(torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])),
                          torch.tensor([[0.0, 1.0, 0.5], [1.0, 1.0, 1.0]]))


# -- the generator ---------------------------------------------------------------------------------
def test_shapes_fill_their_box_and_noise_moves_each_edge_within_rho():
    for kind in range(3):
        canvas = np.zeros((32, 32), np.float32)
        draw_shape(canvas, kind, np.array([4.0, 6.0, 16.0, 20.0]), 1.0)
        ys, xs = np.nonzero(canvas)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (4, 6, 16, 20)
    boxes = np.array([[4.0, 6.0, 16.0, 20.0]] * 2000, np.float32)
    noisy = noisy_boxes(boxes, 0.4, np.random.default_rng(0), 32)
    shift = (noisy - boxes) / np.array([12.0, 14.0, 12.0, 14.0])
    inside = noisy[:, 0] > 0  # edges not clipped by the canvas
    assert np.abs(shift[inside]).max() <= 0.4 + 1e-5 and abs(shift[inside].mean()) < 0.02
    assert (noisy[:, 2:] - noisy[:, :2] >= 1.0 - 1e-6).all()
    assert np.array_equal(noisy_boxes(boxes, 0.0, np.random.default_rng(0), 32), boxes)


def shapes_config(tmp_path, **distill) -> dict:
    raw = load_raw("configs/ssd_det_shapes.yaml")
    raw.update(epochs=1, eval_every=1, runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    raw["data"]["params"].update(n_train=48, n_val=0, n_test=24)
    raw["distill"]["params"].update(distill)
    raw["record"] = {"attention_maps": 0, "tensorboard": False}
    return raw


def test_dataset_objects_and_bad_params(tmp_path):
    cfg = validate(shapes_config(tmp_path), "x")
    assert task_for("shape_scenes").name == "box_refine"
    data = build_data(cfg.data, 3)
    test = data.test
    assert len(test.obj_ids) == int(test.y.sum()) and (test.obj_ids // OBJECT_STRIDE == test.ids[test.obj_image]).all()
    assert ((test.noisy_boxes - test.true_boxes).abs().sum(1) > 0).all()
    raw = shapes_config(tmp_path)
    raw["data"]["params"]["rho"] = 0.9
    with pytest.raises(ConfigError, match=r"data.params.rho"):
        build_data(validate(raw, "x").data, 0)


def test_tiny_run_records_pseudo_boxes_and_recomputes_the_metric(tmp_path):
    from kd_engine.run import train
    from kd_engine.store import open_run

    run = open_run(train(validate(shapes_config(tmp_path), "x")))
    final = run.final_metrics()
    rows = run.instances(split="test")
    pseudo = torch.tensor(rows[["pseudo_x0", "pseudo_y0", "pseudo_x1", "pseudo_y1"]].to_numpy(), dtype=torch.float32)
    true = torch.tensor(rows[["true_x0", "true_y0", "true_x1", "true_y1"]].to_numpy(), dtype=torch.float32)
    assert abs(final["test/student_pseudo_iou"] - box_iou(pseudo, true).diagonal().mean().item()) < 1e-4
    assert {"weight_max", "topk_mass", "confidence_topk", "image_id"} <= set(rows.columns)
    assert "train/student_pseudo_iou" in final and 0 < final["test/noisy_iou"] < 1
    train_rows = run.instances(split="train")
    assert {"mil_loss", "spsd_loss", "sisd_loss", "pseudo_iou"} <= set(train_rows.columns)
    bags = run.load_artifact("bags/test")
    assert bags.shape == (len(rows), 10, 6)
    with pytest.raises(ConfigError, match="distill.params.topk"):
        train(validate(shapes_config(tmp_path, topk=11), "x"))

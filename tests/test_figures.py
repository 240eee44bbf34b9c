"""The run figures are plain functions of DataFrames: check the data of their traces."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import workbench.figures as figures
from workbench.figures import runs as F


def test_exported_through_the_package():
    for name in F.__all__:
        assert getattr(figures, name) is getattr(F, name)


def test_ema_smooth_matches_tensorboard():
    values = [1.0, 2.0, 3.0]
    w = 0.5
    # debiased EMA: first value unchanged, then (w*last + (1-w)*v) / (1 - w**n)
    expected = [1.0, (0.25 + 1.0) / 0.75, (0.625 + 1.5) / 0.875]
    assert np.allclose(F.ema_smooth(values, w), expected)
    assert np.array_equal(F.ema_smooth(values, 0.0), values)
    constant = F.ema_smooth([0.98888] * 50, 0.9)
    assert np.all(constant == 0.98888)  # clipped: no float noise on a flat line


def _scalars() -> pd.DataFrame:
    rows = []
    for run in ("a", "b"):
        for step in range(5):
            rows.append({"run": run, "key": "train/loss", "step": step, "epoch": step // 2,
                         "value": 10.0 / (step + 1)})
            rows.append({"run": run, "key": "lr", "step": step, "epoch": step // 2, "value": 0.1})
    return pd.DataFrame(rows)


def test_scalar_curves_overlays_runs():
    fig = F.scalar_curves(_scalars(), "train/loss")
    assert [t.name for t in fig.data] == ["a", "b"]
    assert list(fig.data[0].x) == [0, 1, 2, 3, 4]
    assert np.allclose(fig.data[0].y, [10.0, 5.0, 10 / 3, 2.5, 2.0])
    smooth = F.scalar_curves(_scalars(), "train/loss", smoothing=0.6, log_y=True)
    assert len(smooth.data) == 4  # a faint raw line behind each smoothed one
    assert smooth.data[0].opacity == 0.25 and not smooth.data[0].showlegend
    assert smooth.layout.yaxis.type == "log"
    assert np.allclose(smooth.data[1].y, F.ema_smooth([10.0, 5.0, 10 / 3, 2.5, 2.0], 0.6))


def _instances(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"instance_id": np.arange(n), "label": np.arange(n) % 3, "epoch": 0,
                         "weight": rng.uniform(0, 1, n), "teacher_loss": rng.gamma(2, 1, n),
                         "student_loss": rng.gamma(2, 1, n), "teacher_pred": np.arange(n) % 3,
                         "student_pred": (np.arange(n) + (np.arange(n) % 5 == 0)) % 3})


def test_weight_histogram_and_scatter():
    frame = _instances()
    hist = F.weight_histogram(frame)
    assert len(hist.data) == 1 and len(hist.data[0].x) == 60
    scatter = F.weight_scatter(frame, x="teacher_loss", class_names=["zero", "one", "two"])
    assert [t.name for t in scatter.data] == ["zero", "one", "two"]
    assert sum(len(t.x) for t in scatter.data) == 60
    part = frame[frame.label == 1]
    assert np.allclose(sorted(scatter.data[1].y), sorted(part.weight))
    sampled = F.weight_scatter(frame, max_points=10)
    assert sum(len(t.x) for t in sampled.data) == 10


def test_weight_trajectories_one_line_per_instance():
    frame = pd.DataFrame({"instance_id": [1, 1, 1, 2, 2, 2], "epoch": [2, 0, 1, 0, 1, 2],
                          "weight": [0.3, 0.1, 0.2, 0.9, 0.8, 0.7]})
    fig = F.weight_trajectories(frame)
    assert [t.name for t in fig.data] == ["id 1", "id 2"]
    assert list(fig.data[0].x) == [0, 1, 2] and list(fig.data[0].y) == [0.1, 0.2, 0.3]


def test_disparity_heatmap_and_curves():
    rows = [(e, lay, lay, m, e * 0.1 + (0.5 if lay == "b" else 0.0))
            for e in range(3) for lay in ("a", "b") for m in ("cka", "disparity")]
    features = pd.DataFrame(rows, columns=["epoch", "student_layer", "teacher_layer", "metric", "value"])
    heat = F.disparity_heatmap(features)
    assert list(heat.data[0].y) == ["a", "b"] and list(heat.data[0].x) == [0, 1, 2]
    assert np.allclose(heat.data[0].z, [[0.0, 0.1, 0.2], [0.5, 0.6, 0.7]])
    curves = F.disparity_curves(features, "disparity")
    assert [t.name for t in curves.data] == ["a", "b"]
    mixed = features.assign(teacher_layer="t")
    assert list(F.disparity_heatmap(mixed).data[0].y) == ["a ← t", "b ← t"]


def test_map_panels_and_gallery():
    a = np.arange(16.0).reshape(4, 4)
    fig = F.map_panels({"input": a / 15, "teacher": a, "difference": a - 8})
    assert [t.name for t in fig.data] == ["input", "teacher", "difference"]
    assert np.allclose(fig.data[1].z, a[::-1])  # row 0 drawn at the top
    assert fig.data[2].zmin == -8 and fig.data[2].zmax == 8
    gallery = F.image_gallery([np.zeros((8, 8)), np.ones((3, 8, 8)) * 0.5, np.ones((8, 8, 1))],
                              ["x", "y", "z"], ncols=2)
    assert len(gallery.data) == 3
    assert gallery.data[1].type == "image" and gallery.data[0].type == "heatmap"
    assert [a.text for a in gallery.layout.annotations][:3] == ["x", "y", "z"]


def test_confusion_and_per_class_accuracy():
    frame = _instances(30)
    counts = F.confusion_counts(frame.label, frame.student_pred, 3)
    assert counts.sum() == 30
    assert counts.trace() == int((frame.label == frame.student_pred).sum())
    fig = F.confusion_matrix(frame, "student_pred", class_names=["a", "b", "c"])
    assert np.array_equal(np.asarray(fig.data[0].z), counts)
    assert list(fig.data[0].x) == ["a", "b", "c"]
    normed = F.confusion_matrix(frame, "student_pred", normalize=True)
    assert np.allclose(np.asarray(normed.data[0].z).sum(axis=1), 1.0)
    pca = F.per_class_accuracy(frame, {"teacher": "teacher_pred", "student": "student_pred"})
    assert [t.name for t in pca.data] == ["teacher", "student"]
    assert list(pca.data[0].y) == [1.0, 1.0, 1.0]
    expected = (frame.student_pred == frame.label).groupby(frame.label).mean().tolist()
    assert np.allclose(pca.data[1].y, expected)


@pytest.mark.parametrize("log_x", [True, False])
def test_tradeoff(log_x):
    frame = pd.DataFrame({"label": ["s1", "s2", "t"], "role": ["student", "student", "teacher"],
                          "params": [1e3, 5e3, 3e5], "accuracy": [0.8, 0.9, 0.95]})
    fig = F.tradeoff(frame, log_x=log_x)
    assert [t.name for t in fig.data] == ["student", "teacher"]
    assert list(fig.data[0].x) == [1e3, 5e3] and list(fig.data[1].text) == ["t"]
    assert fig.layout.xaxis.type == ("log" if log_x else "linear")

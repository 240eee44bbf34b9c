"""The zero-shot evaluator of UP-VL's miniature: what a LiDAR-only student finds and how it names
it, from its per-point objectness and 16-d features alone (no camera at test time).

Per scene:

- *Detection*: the points with objectness ≥ ``threshold`` are grouped by the same DBSCAN as the
  auto-labels; a true object is found when one group covers it with point IoU ≥ 0.5
  (`kd_engine.parts.autolabel.instance_recall`). Recall is reported separately for objects that
  moved between the frames and for static ones (the class-agnostic motion baseline can only be
  taught the former).
- *Naming*, per true object: argmax_c mean over its points of cos(f_3D(p), t_c) over all classes,
  the held-out one included (scored on the true object's points, so naming is judged apart from
  detection). Accuracy is reported over the classes seen in 3-D labelling and, separately, for the
  held-out class, whose chance level is 1/K.
- *Per point*: the class is the ground where objectness < ``threshold``, else argmax_c
  cos(f_3D(p), t_c); the mIoU over the K object classes and the ground is computed directly from
  one confusion matrix over the split (no matching).
"""
from __future__ import annotations

import numpy as np

from kd_engine.dense_metrics import iou_per_class, pixel_confusion
from kd_engine.parts.autolabel import cosine_to_classes, instance_recall, segments

OBJECT_COLUMNS = ("scene", "object", "true_class", "moving", "found", "named")


def point_classes(objectness: np.ndarray, features: np.ndarray, embeddings: np.ndarray, ground: int,
                  threshold: float = 0.5) -> np.ndarray:
    """(N,) predicted class per point: ``ground`` below the objectness threshold, else the nearest class embedding."""
    named = cosine_to_classes(features, embeddings).argmax(1)
    return np.where(objectness >= threshold, named, ground)


def evaluate_scenes(dataset, objectness: np.ndarray, features: np.ndarray, embeddings: np.ndarray, *,
                    held_out: int, ground: int, eps: float, min_samples: int, threshold: float = 0.5):
    """Metrics (dict), per-scene columns (dict of arrays, ``instance_id`` first), the per-object
    table ((objects, 6) int64 in ``OBJECT_COLUMNS`` order) and the per-point predicted classes
    (S, N) of a split. ``dataset`` holds ``xyz``, ``y``, ``instance``, ``moving`` and ``ids``
    per scene; ``objectness`` (S, N) and ``features`` (S, N, D) are the student's."""
    k = len(embeddings)
    labels = dataset.y.numpy()
    predicted = np.stack([point_classes(o, f, embeddings, ground, threshold) for o, f in zip(objectness, features)])
    confusion = pixel_confusion(labels, predicted, k + 1)
    rows, columns = [], {"instance_id": dataset.ids.numpy(), "objects": [], "found": [], "named_correct": [],
                         "predicted_objects": []}
    for i, sid in enumerate(dataset.ids.tolist()):
        instance = dataset.instance[i]
        groups = segments(dataset.xyz[i], objectness[i] >= threshold, eps, min_samples)
        found = instance_recall(instance, groups)
        cos = cosine_to_classes(features[i], embeddings)
        correct = 0
        for obj, hit in found.items():
            members = instance == obj
            true_class, named = int(labels[i][members][0]), int(cos[members].mean(0).argmax())
            correct += named == true_class
            rows.append((int(sid), obj, true_class, int(dataset.moving[i][members][0]), int(hit), named))
        for key, value in (("objects", len(found)), ("found", sum(found.values())), ("named_correct", correct),
                           ("predicted_objects", int(groups.max() + 1))):
            columns[key].append(value)
    table = np.asarray(rows, dtype=np.int64).reshape(-1, len(OBJECT_COLUMNS))
    iou = iou_per_class(confusion)
    seen = table[:, 2] != held_out
    metrics = {"recall_static": _mean(table[table[:, 3] == 0, 4]), "recall_moving": _mean(table[table[:, 3] == 1, 4]),
               "recall_held_out": _mean(table[~seen, 4]),
               "naming_acc_seen": _mean(table[seen, 5] == table[seen, 2]),
               "naming_acc_held_out": _mean(table[~seen, 5] == table[~seen, 2]),
               "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
               "point_acc": float(np.trace(confusion) / max(confusion.sum(), 1))}
    metrics.update({f"iou_{c}": float(iou[c]) for c in range(k + 1) if np.isfinite(iou[c])})
    return metrics, {key: np.asarray(v) for key, v in columns.items()}, table, predicted


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")

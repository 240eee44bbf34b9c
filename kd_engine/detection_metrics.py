"""Detection evaluation: COCO mAP through pycocotools, plus per-image TP/FP counts.

Why pycocotools: its COCOeval is the reference everyone reports against, so the workbench's
numbers are comparable with papers. This module only feeds it and reads its arrays back.

Decisions:
- Evaluation is restricted to ``dataset.ids``, so a split made with ``subset`` (which shares the
  whole file's COCO index) is scored on its own images only.
- Zero detections are scored, not special-cased: an empty result index goes through COCOeval,
  which gives 0 precision to every class that has ground truth.
- A class with no (non-crowd) ground truth in the evaluated images has an undefined AP: NaN in
  ``per_class_AP``. pycocotools' ``-1`` ("undefined") in the summary stats also becomes NaN.
"""
from __future__ import annotations

import contextlib
import copy
import io

import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval as CocoEvaluation
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from kd_engine.data.detection.coco import DetectionDataset, detection_collate

__all__ = ["coco_map", "per_image_detection_records", "predict_detections"]

_STAT_NAMES = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
               "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


@torch.no_grad()
def predict_detections(model: torch.nn.Module, dataset: DetectionDataset, device="cpu",
                       batch_size: int = 8) -> list[dict]:
    """Run a torchvision detector over ``dataset``; COCO result dicts (bbox xywh, category ids
    mapped back from labels 1..K). The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        collate_fn=detection_collate)
    out: list[dict] = []
    try:
        for images, _, ids in loader:
            preds = model([img.to(device) for img in images])
            for iid, p in zip(ids.tolist(), preds):
                boxes = p["boxes"].detach().cpu().double()
                boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
                for box, score, label in zip(boxes.tolist(), p["scores"].cpu().tolist(),
                                             p["labels"].cpu().tolist()):
                    cat = dataset.label_to_cat.get(int(label))
                    if cat is None:  # background or a label the dataset does not know
                        continue
                    out.append({"image_id": int(iid), "category_id": int(cat),
                                "bbox": [float(v) for v in box], "score": float(score)})
    finally:
        model.train(was_training)
    return out


def _results_index(gt: COCO, detections: list[dict]) -> COCO:
    """COCO.loadRes crashes on an empty list, so that case gets an empty index by hand."""
    if detections:
        return gt.loadRes(copy.deepcopy(detections))  # loadRes writes ids/areas into the dicts
    res = COCO()
    res.dataset = {"images": list(gt.dataset["images"]), "annotations": [],
                   "categories": copy.deepcopy(gt.dataset["categories"])}
    res.createIndex()
    return res


def _nan_if_undefined(v: float) -> float:
    return float("nan") if v < 0 else float(v)


def coco_map(dataset: DetectionDataset, detections: list[dict]) -> dict:
    """COCOeval (bbox) of ``detections`` against ``dataset.coco`` on ``dataset.ids``.

    Returns ``mAP`` (AP@[.5:.95]), ``AP50``, ``AP75``, the other summary stats by name,
    ``per_class_AP`` {category name: AP} read from the precision array (IoU thresholds and
    recall averaged, area "all", maxDets 100, -1 entries ignored) and ``summary``, the text
    pycocotools would have printed.
    """
    ids = set(dataset.ids)
    dets = [d for d in detections if int(d["image_id"]) in ids]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev = CocoEvaluation(dataset.coco, _results_index(dataset.coco, dets), iouType="bbox")
        ev.params.imgIds = list(dataset.ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    p = ev.params
    precision = ev.eval["precision"]  # [IoU thr, recall thr, category, area range, maxDets]
    a, m = p.areaRngLbl.index("all"), p.maxDets.index(100) if 100 in p.maxDets else -1
    per_class = {}
    for k, cat in enumerate(p.catIds):
        pr = precision[:, :, k, a, m]
        pr = pr[pr > -1]
        per_class[dataset.coco.cats[cat]["name"]] = float(pr.mean()) if pr.size else float("nan")
    out = {name: _nan_if_undefined(v) for name, v in zip(_STAT_NAMES, ev.stats)}
    lines = [ln for ln in buf.getvalue().splitlines() if ln.lstrip().startswith("Average")]
    out.update(per_class_AP=per_class, summary="\n".join(lines), num_detections=len(dets))
    return out


def per_image_detection_records(dataset: DetectionDataset, detections: list[dict],
                                iou_threshold: float = 0.5,
                                score_threshold: float = 0.5) -> list[dict]:
    """Per-image TP/FP/FN counts for the dashboard: greedy matching by score within a class at
    IoU >= ``iou_threshold``, each ground-truth box matched once. Detections unmatched to a
    real box but overlapping a crowd box are counted as ``ignored``, as COCOeval would."""
    by_image: dict[int, list[dict]] = {}
    for d in detections:
        if d["score"] >= score_threshold:
            by_image.setdefault(int(d["image_id"]), []).append(d)
    records = []
    for iid in dataset.ids:
        dets = sorted(by_image.get(iid, []), key=lambda d: -d["score"])
        anns = dataset.coco.imgToAnns.get(iid, [])
        real = [x for x in anns if not x.get("iscrowd", 0)]
        crowd = [x for x in anns if x.get("iscrowd", 0)]
        matched: set[int] = set()
        tp = fp = ignored = 0
        if dets:
            dbox = _xyxy([d["bbox"] for d in dets])
            iou_real = box_iou(dbox, _xyxy([x["bbox"] for x in real]))
            iou_crowd = box_iou(dbox, _xyxy([x["bbox"] for x in crowd]))
        for i, d in enumerate(dets):
            best, best_iou = None, iou_threshold
            for j, g in enumerate(real):
                if j in matched or g["category_id"] != d["category_id"]:
                    continue
                if iou_real[i, j] >= best_iou:
                    best, best_iou = j, float(iou_real[i, j])
            if best is not None:
                matched.add(best)
                tp += 1
            elif any(c["category_id"] == d["category_id"] and iou_crowd[i, j] >= iou_threshold
                     for j, c in enumerate(crowd)):
                ignored += 1
            else:
                fp += 1
        records.append({"image_id": int(iid), "n_gt": len(real), "n_det": len(dets), "tp": tp,
                        "fp": fp, "fn": len(real) - tp, "ignored": ignored})
    return records


def _xyxy(boxes: list) -> torch.Tensor:
    t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)


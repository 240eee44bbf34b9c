"""Per-instance teacher detection losses on the teacher's own features (AID).

torchvision reports detection losses only in train mode and only reduced over the batch, while
AID needs the frozen teacher's loss per image, per image x FPN level and per ground-truth box.
These functions rerun the teacher's own pieces (transform, backbone+FPN, head, anchors, matcher,
box coder) in whatever mode the model is in (a frozen teacher is in eval mode) and keep the
losses unreduced. The FPN features of the same pass are returned for distillation, so the
teacher loss costs no extra forward pass. Everything runs under ``torch.no_grad`` unless
``grad=True`` (AID weights are stop-gradient anyway).

Conventions (all sums of per-anchor losses are divided by the image's foreground count):
- per image: what torchvision computes for that image before averaging over images;
- per image x level: the same sums split by the anchor's level, so levels add up to the image;
- per GT: the foreground anchors matched to a GT, averaged over those anchors; a GT that got no
  anchor has ``num_anchors == 0`` and loss 0 (AID gives it w = 1).
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from kd_engine.losses.teacher_passes import GTLosses, TeacherLosses, routed_pass


def _level_tags(features: list[Tensor], num_anchors: int, device) -> tuple[Tensor, int]:
    """Level index of every anchor (anchors per location = total anchors / sum of H*W)."""
    hw = [f.shape[-2] * f.shape[-1] for f in features]
    per_loc = num_anchors // sum(hw)
    counts = torch.tensor([h * per_loc for h in hw], device=device)
    return torch.repeat_interleave(torch.arange(len(hw), device=device), counts), len(hw)


def _decompose(cls_a: Tensor, box_a: Tensor, matched: Tensor, tags: Tensor, num_levels: int,
               targets: list[dict[str, Tensor]]):
    """Per-anchor losses (B, N) -> per image, per image x level and per GT (see module doc).

    Reductions run in float64: one large foreground term plus hundreds of tiny background terms
    otherwise lose ~1e-5 to accumulation order, and levels must add up to the image.
    """
    dtype = cls_a.dtype
    cls_a, box_a = cls_a.double(), box_a.double()
    fg = matched >= 0
    nfg = fg.sum(1)
    norm = nfg.clamp_min(1).to(cls_a.dtype)
    B = cls_a.shape[0]
    cls_level = cls_a.new_zeros(B, num_levels).index_add_(1, tags, cls_a) / norm[:, None]
    box_level = box_a.new_zeros(B, num_levels).index_add_(1, tags, box_a) / norm[:, None]
    cls_img = cls_a.sum(1) / norm
    box_img = box_a.sum(1) / norm
    per_gt = []
    for b, t in enumerate(targets):
        G = t["boxes"].shape[0]
        idx = matched[b][fg[b]]
        count = torch.bincount(idx, minlength=G)
        denom = count.clamp_min(1).to(cls_a.dtype)
        gcls = cls_a.new_zeros(G).index_add_(0, idx, cls_a[b][fg[b]]) / denom
        gbox = box_a.new_zeros(G).index_add_(0, idx, box_a[b][fg[b]]) / denom
        per_gt.append(GTLosses(t["boxes"], t["labels"], gcls.to(dtype), gbox.to(dtype), count))
    cls_fg = (cls_a * fg).sum(1) / norm
    return (*(v.to(dtype) for v in (cls_img, box_img, cls_level, box_level)), nfg, per_gt,
            cls_fg.to(dtype))


def _prepare(model: nn.Module, images, targets, features=None):
    """Transform (normalise, batch; no resize at min=max=image size) and run backbone+FPN, or take
    ``features`` (an FPN dict from elsewhere, e.g. the student's) in place of the model's own."""
    images_t, targets_t = model.transform(list(images), [dict(t) for t in targets])
    if features is not None:
        return images_t, targets_t, OrderedDict(features)
    feats = model.backbone(images_t.tensors)
    if isinstance(feats, Tensor):
        feats = OrderedDict([("0", feats)])
    return images_t, targets_t, feats


def _per_anchor_box(kind: str, coder, deltas: Tensor, anchors: Tensor, gt: Tensor) -> Tensor:
    """Unreduced box loss per anchor (summed over coordinates) for torchvision's loss types."""
    if kind == "l1":
        return F.l1_loss(deltas, coder.encode_single(gt, anchors), reduction="none").sum(-1)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(deltas, coder.encode_single(gt, anchors), reduction="none").sum(-1)
    if kind == "giou":
        return generalized_box_iou_loss(coder.decode_single(deltas, anchors), gt, reduction="none")
    raise ValueError(f"unsupported RetinaNet box loss {kind!r} (l1, smooth_l1, giou)")


def _top_background(logits: Tensor, background: Tensor) -> Tensor:
    """The highest class probability on anchors matched to no object: a confident false positive
    on clutter shows up here, where no per-GT loss can see it."""
    scores = torch.sigmoid(logits.detach()).amax(-1)
    return torch.where(background, scores, torch.zeros_like(scores)).amax(-1)


def retinanet_teacher_losses(model: RetinaNet, images, targets,
                             grad: bool = False, features=None) -> TeacherLosses:
    """Per-instance focal + box losses of a torchvision RetinaNet on its own features (AID),
    or on ``features`` given (the ``student_features`` ablation)."""
    with nullcontext() if grad else torch.no_grad():
        images_t, targets_t, feats = _prepare(model, images, targets, features)
        flist = list(feats.values())
        head = model.head(flist)
        anchors = model.anchor_generator(images_t, flist)
        logits, deltas = head["cls_logits"], head["bbox_regression"]
        B, N, K = logits.shape
        tags, L = _level_tags(flist, N, logits.device)
        reg = model.head.regression_head
        matched, cls_a, box_a = [], [], []
        for b, t in enumerate(targets_t):
            if t["boxes"].numel() == 0:
                m = torch.full((N,), -1, dtype=torch.long, device=logits.device)
            else:
                m = model.proposal_matcher(box_iou(t["boxes"], anchors[b]))
            fg = m >= 0
            onehot = torch.zeros_like(logits[b])
            onehot[fg, t["labels"][m[fg]]] = 1.0
            focal = sigmoid_focal_loss(logits[b], onehot, reduction="none").sum(-1)
            cls_a.append(focal * (m != model.proposal_matcher.BETWEEN_THRESHOLDS))
            box = logits.new_zeros(N)
            if fg.any():
                box[fg] = _per_anchor_box(reg._loss_type, reg.box_coder, deltas[b][fg],
                                          anchors[b][fg], t["boxes"][m[fg]])
            box_a.append(box)
            matched.append(m)
        matched = torch.stack(matched)
        top_bg = _top_background(logits, matched == model.proposal_matcher.BELOW_LOW_THRESHOLD)
        out = _decompose(torch.stack(cls_a), torch.stack(box_a), matched, tags, L, targets_t)
    cls, box, cls_level, box_level, nfg, per_gt, cls_fg = out
    return TeacherLosses(cls, box, cls_level, box_level, nfg, per_gt, feats, list(feats),
                         parts={"cls_foreground": cls_fg, "top_background_score": top_bg})


def _fcos_match(model: FCOS, anchors: Tensor, boxes: Tensor, level_sizes: list[int]) -> Tensor:
    """FCOS assignment: the anchor point lies inside the GT, within radius*size of its centre,
    and the GT's largest edge distance is in the level's range (4s, 8s); smallest GT wins."""
    N = anchors.shape[0]
    if boxes.numel() == 0:
        return torch.full((N,), -1, dtype=torch.long, device=anchors.device)
    centre = (anchors[:, :2] + anchors[:, 2:]) / 2
    size = anchors[:, 2] - anchors[:, 0]
    gt_centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    radius = model.center_sampling_radius * size[:, None]
    near = (centre[:, None] - gt_centre[None]).abs().amax(-1) < radius
    x, y = centre[:, 0:1], centre[:, 1:2]
    dist = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], -1)
    lo, hi = size * 4, size * 8
    lo[: level_sizes[0]] = 0
    hi[-level_sizes[-1]:] = float("inf")
    far = dist.amax(-1)
    ok = near & (dist.amin(-1) > 0) & (far > lo[:, None]) & (far < hi[:, None])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    best = torch.where(ok, area[None], torch.full_like(far, float("inf"))).argmin(1)
    return torch.where(ok.any(1), best, torch.full_like(best, -1))


def fcos_teacher_losses(model: FCOS, images, targets, grad: bool = False,
                        features=None) -> TeacherLosses:
    """Per-instance FCOS losses: focal over all locations (cls); GIoU + centerness BCE on
    foreground (box side, since both grade localisation). torchvision divides by the batch-wide
    foreground count; per image here divides by the image's count (see ``parts``).
    ``parts`` also carries the head's raw outputs at every location for output distillation
    (BCKD): ``cls_logits`` (B, N, K) and ``boxes`` (B, N, 4), the decoded x0, y0, x1, y1."""
    with nullcontext() if grad else torch.no_grad():
        images_t, targets_t, feats = _prepare(model, images, targets, features)
        flist = list(feats.values())
        head = model.head(flist)
        anchors = model.anchor_generator(images_t, flist)
        logits, deltas = head["cls_logits"], head["bbox_regression"]
        ctr = head["bbox_ctrness"][..., 0]
        B, N, K = logits.shape
        tags, L = _level_tags(flist, N, logits.device)
        level_sizes = torch.bincount(tags, minlength=L).tolist()
        coder = model.head.box_coder
        matched, cls_a, giou_a, ctr_a, decoded = [], [], [], [], []
        for b, t in enumerate(targets_t):
            m = _fcos_match(model, anchors[b], t["boxes"], level_sizes)
            fg = m >= 0
            onehot = torch.zeros_like(logits[b])
            onehot[fg, t["labels"][m[fg]]] = 1.0
            cls_a.append(sigmoid_focal_loss(logits[b], onehot, reduction="none").sum(-1))
            giou, cness = logits.new_zeros(N), logits.new_zeros(N)
            decoded.append(coder.decode(deltas[b], anchors[b]))  # every location (BCKD's box KD)
            if fg.any():
                gt, anc = t["boxes"][m[fg]], anchors[b][fg]
                giou[fg] = generalized_box_iou_loss(decoded[-1][fg], gt, reduction="none")
                ltrb = coder.encode(anc, gt)
                lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
                target = torch.sqrt(lr.amin(-1) / lr.amax(-1) * (tb.amin(-1) / tb.amax(-1)))
                cness[fg] = F.binary_cross_entropy_with_logits(ctr[b][fg], target, reduction="none")
            matched.append(m)
            giou_a.append(giou)
            ctr_a.append(cness)
        matched = torch.stack(matched)
        top_bg = _top_background(logits, matched < 0)
        giou_a, ctr_a = torch.stack(giou_a), torch.stack(ctr_a)
        out = _decompose(torch.stack(cls_a), giou_a + ctr_a, matched, tags, L, targets_t)
    cls, box, cls_level, box_level, nfg, per_gt, cls_fg = out
    norm = nfg.clamp_min(1).to(cls.dtype)
    parts = {"giou": giou_a.sum(1) / norm, "ctrness": ctr_a.sum(1) / norm, "cls_foreground": cls_fg,
             "top_background_score": top_bg, "cls_logits": logits, "boxes": torch.stack(decoded)}
    return TeacherLosses(cls, box, cls_level, box_level, nfg, per_gt, feats, list(feats), parts)


def fasterrcnn_teacher_losses(model: FasterRCNN, images, targets,
                              grad: bool = False, features=None) -> TeacherLosses:
    """Deterministic Faster R-CNN teacher losses (AID, with the GT boxes as RoIs, plus the RPN).

    RoI part: the GT boxes themselves are the RoIs (RoI-aligned from the teacher's FPN, through the
    box head and predictor); per GT = cross-entropy to its label (cls) + smooth-L1 (beta 1/9) of
    its class's deltas toward 0, a GT RoI's regression target (box). Per image = mean over its
    GTs (0 without GTs), assigned to the FPN level the RoI pools from.
    RPN part: torchvision samples anchors at random; here each image gets the *expected* value of
    its sampled loss: with p = min(#fg, batch*fraction) positives and n = min(batch - p, #bg)
    negatives drawn, objectness = (p*mean_fg BCE + n*mean_bg BCE)/(p+n) and box = p*mean_fg
    smooth-L1/(p+n), split over levels by each anchor's level. cls = RoI CE + RPN objectness,
    box = RoI box + RPN box; levels add up to the image. ``parts`` holds each component.
    """
    with nullcontext() if grad else torch.no_grad():
        images_t, targets_t, feats = _prepare(model, images, targets, features)
        flist, levels = list(feats.values()), list(feats)
        L, B = len(levels), len(targets_t)
        # RoI head on GT boxes.
        boxes = [t["boxes"] for t in targets_t]
        rh = model.roi_heads
        pooled = rh.box_roi_pool(feats, boxes, images_t.image_sizes)
        logits, reg = rh.box_predictor(rh.box_head(pooled))
        labels = torch.cat([t["labels"] for t in targets_t])
        G = labels.numel()
        gt_cls = F.cross_entropy(logits, labels, reduction="none")
        deltas = reg.reshape(G, logits.shape[1], 4)[torch.arange(G, device=reg.device), labels]
        gt_box = F.smooth_l1_loss(deltas, torch.zeros_like(deltas), beta=1 / 9,
                                  reduction="none").sum(-1)
        names = rh.box_roi_pool.featmap_names
        lvl = (rh.box_roi_pool.map_levels(boxes) if len(names) > 1 and G else
               torch.zeros(G, dtype=torch.long, device=labels.device))
        dev = labels.device
        roi_tag = torch.tensor([levels.index(n) for n in names], device=dev)[lvl.long().flatten()]
        img = torch.repeat_interleave(torch.arange(B, device=dev),
                                      torch.tensor([b.shape[0] for b in boxes], device=dev))
        ngt = torch.bincount(img, minlength=B).clamp_min(1).to(gt_cls.dtype)
        flat = img * L + roi_tag
        roi_cls = gt_cls.new_zeros(B * L).index_add_(0, flat, gt_cls).view(B, L) / ngt[:, None]
        roi_box = gt_box.new_zeros(B * L).index_add_(0, flat, gt_box).view(B, L) / ngt[:, None]
        # RPN on all anchors, reduced to the expectation under torchvision's balanced sampler.
        rpn = model.rpn
        obj, rdel = rpn.head(flist)
        anchors = rpn.anchor_generator(images_t, flist)
        obj, rdel = concat_box_prediction_layers(obj, rdel)
        N = anchors[0].shape[0]
        obj, rdel = obj.view(B, N), rdel.view(B, N, 4)
        tags, _ = _level_tags(flist, N, obj.device)
        S, frac = rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction
        rpn_cls, rpn_box = obj.new_zeros(B, L), obj.new_zeros(B, L)
        nfg, count, per_gt, off, top_bg = [], [], [], 0, []
        for b, t in enumerate(targets_t):
            g = t["boxes"].shape[0]
            m = (rpn.proposal_matcher(box_iou(t["boxes"], anchors[b])) if g else
                 torch.full((N,), -1, dtype=torch.long, device=obj.device))
            fg, bg = m >= 0, m == rpn.proposal_matcher.BELOW_LOW_THRESHOLD
            nf, nb = int(fg.sum()), int(bg.sum())
            p = min(nf, int(S * frac))
            n = min(S - p, nb)
            bce = F.binary_cross_entropy_with_logits(obj[b], fg.to(obj.dtype), reduction="none")
            wfg, wbg = p / max(nf, 1) / max(p + n, 1), n / max(nb, 1) / max(p + n, 1)
            rpn_cls[b].index_add_(0, tags, bce * (fg * wfg + bg * wbg))
            if nf:
                tgt = rpn.box_coder.encode_single(t["boxes"][m[fg]], anchors[b][fg])
                sl1 = F.smooth_l1_loss(rdel[b][fg], tgt, beta=1 / 9, reduction="none").sum(-1)
                rpn_box[b].index_add_(0, tags[fg], sl1 * wfg)
            nfg.append(nf)
            top_bg.append(torch.where(bg, torch.sigmoid(obj[b].detach()), torch.zeros_like(obj[b])).amax())
            count.append(p + n)
            per_gt.append(GTLosses(t["boxes"], t["labels"], gt_cls[off:off + g],
                                   gt_box[off:off + g], torch.bincount(m[fg], minlength=g)))
            off += g
    cls_level, box_level = roi_cls + rpn_cls, roi_box + rpn_box
    parts = {"roi_cls": roi_cls.sum(1), "roi_box": roi_box.sum(1), "rpn_cls_level": rpn_cls,
             "rpn_box_level": rpn_box, "rpn_sampled": torch.tensor(count, device=obj.device),
             "top_background_score": torch.stack(top_bg)}
    return TeacherLosses(cls_level.sum(1), box_level.sum(1), cls_level, box_level,
                         torch.tensor(nfg, device=obj.device), per_gt, feats, levels, parts)


def teacher_losses(model: nn.Module, images, targets, grad: bool = False,
                   features=None) -> TeacherLosses:
    """Dispatch on the torchvision detector type (RetinaNet, FCOS or Faster R-CNN).

    ``features`` replaces the model's own FPN maps (same levels and channels): the model's heads
    then grade someone else's features, which is how the official AID code scores its teacher
    (on the student's features); kept as a labelled ablation.
    ``parts["top_background_score"]`` (B,) is the highest score on anchors matched to no object
    (the RPN's objectness for Faster R-CNN).
    A cross-fitted teacher (``kd_engine.models.cross_fit``) scores each image with the fold
    teacher that never saw it (images carry their ``image_id`` in the targets).
    """
    if hasattr(model, "fold_of"):
        fold_of = model.fold_of([int(t["image_id"]) for t in targets])
        return routed_pass(model.folds, fold_of,
                           lambda m, ims, tgs, feats: teacher_losses(m, ims, tgs, grad, feats),
                           images, targets, features)
    if isinstance(model, RetinaNet):
        return retinanet_teacher_losses(model, images, targets, grad, features)
    if isinstance(model, FCOS):
        return fcos_teacher_losses(model, images, targets, grad, features)
    if isinstance(model, FasterRCNN):
        return fasterrcnn_teacher_losses(model, images, targets, grad, features)
    raise TypeError(f"no per-instance teacher loss for {type(model).__name__}")


__all__ = ["GTLosses", "TeacherLosses", "fasterrcnn_teacher_losses", "fcos_teacher_losses",
           "retinanet_teacher_losses", "teacher_losses"]

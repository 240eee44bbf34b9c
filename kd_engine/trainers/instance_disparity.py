"""Per-instance teacher-student disparity of the feature probe instances, for the trainer to record.

Linear CKA (the per-layer number in the features table) compares the two models' centred Gram
matrices over a batch as a whole. Its per-instance counterpart compares one row of them: how an
instance relates to every other probe instance in the student's space against the teacher's. It is
width-agnostic like CKA, and the layers page asks whether it predicts the student's errors.

Stored as one artifact per epoch, `instance_disparity/e<epoch>` (kind `instance_disparity`): an
(instances, layer pairs) float32 array, its meta naming `instance_ids`, `pairs` [[student, teacher],
...], the `split` the probe instances come from and the `metric`.
"""
from __future__ import annotations

import torch

KIND = "instance_disparity"
METRIC = "gram_row"


def gram_row_disparity(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(N,) disparity in [0, 2]: 1 - Pearson correlation, per instance i, of row i of the centred
    linear Gram matrices of student and teacher features (the diagonal left out).

    The Grams are float32 matmuls (the cost); the per-row moments over j != i are taken in float64
    from row sums minus the diagonal term, so no (N, N-1) copy is made."""
    n = student.shape[0]
    if n < 3:
        return torch.full((n,), float("nan"))
    s = student.detach().flatten(1).float()
    t = teacher.detach().flatten(1).float()
    s, t = s - s.mean(0, keepdim=True), t - t.mean(0, keepdim=True)
    gs, gt = (s @ s.T).double(), (t @ t.T).double()
    ds, dt = gs.diagonal(), gt.diagonal()
    m = n - 1
    sum_s, sum_t = gs.sum(1) - ds, gt.sum(1) - dt
    cov = ((gs * gt).sum(1) - ds * dt) - sum_s * sum_t / m
    var_s = (gs.pow(2).sum(1) - ds.pow(2)) - sum_s.pow(2) / m
    var_t = (gt.pow(2).sum(1) - dt.pow(2)) - sum_t.pow(2) / m
    denom = (var_s.clamp_min(0) * var_t.clamp_min(0)).sqrt()
    corr = cov / denom.clamp_min(1e-300)
    return torch.where(denom > 0, 1.0 - corr, torch.full_like(corr, float("nan"))).float()


def record_instance_disparity(writer, epoch: int, ids, student_feats: dict, teacher_feats: dict,
                              pairs, split: str) -> None:
    """Save the (instances, pairs) disparity of the probe instances of this epoch."""
    pairs = [p for p in pairs if p.student in student_feats and p.teacher in teacher_feats]
    if not pairs:
        return
    values = torch.stack([gram_row_disparity(student_feats[p.student], teacher_feats[p.teacher])
                          for p in pairs], dim=1)
    writer.save_artifact(f"{KIND}/e{epoch}", values.numpy(), kind=KIND, epoch=epoch, dtype="float32",
                         meta={"instance_ids": [int(i) for i in ids], "split": split, "metric": METRIC,
                               "pairs": [[p.student, p.teacher] for p in pairs]})

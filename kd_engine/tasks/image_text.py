"""Two-tower image–text runs: a student with an image tower and a text tower learns a shared
embedding space from image–caption pairs (dataset `digit_captions`).

A training batch is B pairs: ``inputs = (images, tokens, digits)``; the method returns the
student's (B, B) image→text affinities as ``logits`` and its per-pair values. Evaluation, per
role (student, and the teacher where the method has one):

- ``zero_shot_acc``: each image gets the digit whose prompt [digit, normal, centre, rot0] has the
  highest cosine with it (`kd_engine.parts.clip_teacher.zero_shot_logits`);
- ``r1`` (image→text recall@1) and ``mean_rank``: each image ranks the *distinct* captions of
  the split (two pairs with the same words are one caption, so a tie between identical captions
  is no error); rank = 1 + the number of distinct captions scoring strictly higher than its own.

Rows per training pair: ``label``, ``step``, ``epoch``, the in-batch image→text ``rank`` of the
student and the method's per-pair values (the loss, and for distillation the teacher's rank and
the KL between the teacher's and the student's affinity rows). Rows per evaluated pair: label,
``<role>_rank``, ``<role>_zero_shot`` (the predicted digit), ``<role>_positive`` (cosine with its
own caption). Artifacts at the last test pass: ``affinity/test/<role>``, the (B, B) cosine
matrices of one batch (the split's first ``AFFINITY_BATCH`` pairs; row i is pair i's affinity
row, meta ``instance_ids`` and ``captions``), shown on the dashboard's Instances page.
"""
from __future__ import annotations

import numpy as np
import torch

from kd_engine.data.captions import caption_text
from kd_engine.methods.image_text_base import IMAGE_TEXT_METHODS
from kd_engine.parts.clip_teacher import zero_shot_logits
from kd_engine.tasks.base import TASKS, Artifact, Batch, Evaluation, Task

AFFINITY_BATCH = 16


def caption_ranks(image: torch.Tensor, text_of: torch.Tensor, tokens: torch.Tensor) -> np.ndarray:
    """Per image, the rank of its own caption among the distinct captions ``tokens`` (N, L):
    1 + the count of distinct captions with a strictly higher cosine. ``text_of`` maps token rows
    to normalised embeddings (a callable)."""
    distinct, own = torch.unique(tokens, dim=0, return_inverse=True)
    sim = image @ text_of(distinct).T
    positive = sim.gather(1, own[:, None])
    return (1 + (sim > positive).sum(1)).cpu().numpy()


def in_batch_ranks(affinity: torch.Tensor) -> torch.Tensor:
    """Per row i of a (B, B) affinity matrix, 1 + the count of entries above its diagonal entry."""
    return 1 + (affinity > affinity.diagonal()[:, None]).sum(1)


@TASKS.register("image_text")
class ImageTextTask(Task):
    name = "image_text"
    methods = IMAGE_TEXT_METHODS
    headline = ("zero_shot_acc", "r1")

    def batches(self, epoch: int, wants_ids: bool = False):
        train = self.data.train
        for positions, keep in self.epoch_positions(epoch):
            ids = train.ids[positions]
            kwargs = {"ids": ids.to(self.device)} if wants_ids else {}
            yield Batch(inputs=(train.x[positions].to(self.device), train.tokens[positions].to(self.device),
                                train.y[positions].to(self.device)), ids=ids, size=len(ids), keep=keep, kwargs=kwargs)

    def step_scalars(self, out) -> dict[str, torch.Tensor]:
        return {f"train/{k}_mean": v.float().mean() for k, v in out.per_sample.items() if k != "student_loss"}

    def train_rows(self, out, batch: Batch, step: int, epoch: int) -> dict[str, torch.Tensor]:
        return self.per_sample_rows(out, batch, step, epoch, label=batch.inputs[2],
                                    rank=in_batch_ranks(out.logits.detach()))

    @torch.no_grad()
    def score(self, model, split: str) -> tuple[dict[str, float], dict[str, np.ndarray], torch.Tensor]:
        """Metrics, per-pair columns and the normalised image and text embeddings of one model."""
        data = getattr(self.data, split)
        was = model.training
        model.eval()
        x, tokens = data.x.to(self.device), data.tokens.to(self.device)
        image, text = model.encode_image(x), model.encode_text(tokens)
        predicted = zero_shot_logits(model, x).argmax(1).cpu().numpy()
        ranks = caption_ranks(image, model.encode_text, tokens)
        model.train(was)
        metrics = {"zero_shot_acc": float((predicted == data.y.numpy()).mean()), "r1": float((ranks == 1).mean()),
                   "mean_rank": float(ranks.mean())}
        columns = {"rank": ranks, "zero_shot": predicted, "positive": (image * text).sum(1).cpu().numpy()}
        return metrics, columns, torch.stack([image, text])

    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        data = getattr(self.data, split)
        metrics, columns, artifacts = {}, {"instance_id": data.ids.numpy(), "label": data.y.numpy()}, []
        for role, model in (("student", student), ("teacher", teacher)):
            if model is None:
                continue
            values, per_pair, embeddings = self.score(model, split)
            metrics.update({f"{split}/{role}_{k}": v for k, v in values.items()})
            columns.update({f"{role}_{k}": v for k, v in per_pair.items()})
            if final:
                k = min(AFFINITY_BATCH, len(data))
                cosines = (embeddings[0, :k] @ embeddings[1, :k].T).float().cpu().numpy()
                artifacts.append(Artifact(f"affinity/{split}/{role}", cosines, kind="affinity", role=role, meta={
                    "split": split, "instance_ids": data.ids[:k].tolist(),
                    "captions": [caption_text(t) for t in data.tokens[:k].tolist()],
                    "layout": "(image i, caption j) cosine; row i is pair i's image->text affinity row"}))
        return Evaluation(metrics, columns, artifacts)

    def save_inputs(self, writer) -> None:
        ids = np.concatenate([s.ids.numpy() for s in (self.data.train, self.data.val, self.data.test)])
        writer.save_images(ids, self.data.images(ids))

    def run_meta(self, distiller) -> dict:
        extra = distiller.describe() if hasattr(distiller, "describe") else {}
        return {"task": "image_text", "vocab": list(self.data.meta.get("vocab", [])), **extra}

"""Generation (class editing): a feed-forward editor turns each source image into an image of a
target class; the method's losses decide how (e.g. score distillation from a diffusion model).

Training rows per instance: the source ``label``, the ``target`` class, ``step``, ``epoch`` and
every per-sample value the method returned (for score distillation: the ``timestep`` used, the
score-gradient ``entropy``, the loss terms). Evaluation judges the edits with a frozen digits
classifier that is independent of the method (scikit-learn logistic regression fitted on the
training split's images of every class, ``bundle.meta["prior"]``): ``edit_success`` is its mean
probability of the target class, ``target_acc`` the share of edits it labels as the target, and
``identity_l2`` the mean pixel L2 distance from edit to source (content preservation: lower keeps
more of the source). Edits are clipped to [0, 1] before judging. The last test pass saves the
sources and edits as an ``edits`` artifact for the dashboard's image grid.
"""
from __future__ import annotations


import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

import kd_engine.methods  # noqa: F401  (registers every method)
from kd_engine.methods.registry import GENERATION_METHODS
from kd_engine.tasks.base import TASKS, Artifact, Batch, Evaluation, Task

GRID_SIZE = 48  # edits saved for the dashboard per split


class Judge:
    """The frozen classifier that scores edits (fitted once per split seed, deterministic)."""

    def __init__(self, prior: dict):
        x = prior["x"].flatten(1).numpy()
        self.model = LogisticRegression(max_iter=2000, C=1.0).fit(x, prior["y"].numpy())

    def proba(self, images: torch.Tensor) -> np.ndarray:
        return self.model.predict_proba(images.detach().float().clamp(0, 1).flatten(1).cpu().numpy())


@TASKS.register("generation")
class GenerationTask(Task):
    name = "generation"
    methods = GENERATION_METHODS
    headline = ("edit_success", "identity_l2")

    def setup(self) -> None:
        self.target_class = int(self.data.meta["target_class"])
        self.judge = Judge(self.data.meta["prior"])

    def targets(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.target_class, dtype=torch.int64)

    # -- training -------------------------------------------------------------------------------
    def batches(self, epoch: int, wants_ids: bool = False):
        train = self.data.train
        for positions, keep in self.epoch_positions(epoch):
            x = train.x[positions].to(self.device)
            y = train.y[positions].to(self.device)
            ids = train.ids[positions]
            kwargs = {"ids": ids.to(self.device)} if wants_ids else {}
            yield Batch(inputs=(x, y, self.targets(len(y)).to(self.device)), ids=ids, size=len(y), keep=keep,
                        kwargs=kwargs)

    def step_scalars(self, out) -> dict[str, torch.Tensor]:
        return {f"train/{k}_mean": v.float().mean() for k, v in out.per_sample.items()
                if k in ("timestep", "entropy", "identity")}

    def train_rows(self, out, batch: Batch, step: int, epoch: int) -> dict[str, torch.Tensor]:
        return self.per_sample_rows(out, batch, step, epoch, label=batch.inputs[1], target=batch.inputs[2])

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def edit(self, student, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(sources, edits) of a split, on the CPU, the student in eval mode."""
        data = getattr(self.data, split)
        was = student.training
        student.eval()
        edits = student(data.x.to(self.device), self.targets(len(data)).to(self.device)).float().cpu()
        student.train(was)
        return data.x, edits

    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        data = getattr(self.data, split)
        sources, edits = self.edit(student, split)
        proba = self.judge.proba(edits)
        p_target = proba[:, self.target_class]
        l2 = (edits.clamp(0, 1) - sources).flatten(1).norm(dim=1).numpy()
        source_p = self.judge.proba(sources)[np.arange(len(sources)), data.y.numpy()]
        metrics = {f"{split}/student_edit_success": float(p_target.mean()),
                   f"{split}/student_target_acc": float((proba.argmax(1) == self.target_class).mean()),
                   f"{split}/student_identity_l2": float(l2.mean()),
                   f"{split}/judge_source_conf": float(source_p.mean())}
        columns = {"instance_id": data.ids.numpy(), "label": data.y.numpy(),
                   "target": np.full(len(data), self.target_class), "student_p_target": p_target,
                   "student_pred": proba.argmax(1), "student_identity_l2": l2}
        artifacts = []
        if final:
            k = min(GRID_SIZE, len(data))
            pairs = torch.stack([sources[:k, 0], edits[:k, 0].clamp(0, 1)], dim=1).numpy()  # (k, 2, H, W)
            artifacts.append(Artifact(f"edits/{split}", pairs, kind="edits", role="student", meta={
                "split": split, "instance_id": data.ids[:k].tolist(), "source": data.y[:k].tolist(),
                "target": [self.target_class] * k, "p_target": [round(float(v), 4) for v in p_target[:k]],
                "layout": "(instance, [source, edit], H, W)"}))
        return Evaluation(metrics, columns, artifacts)

    # -- what the dashboard needs -----------------------------------------------------------------
    def save_inputs(self, writer) -> None:
        ids = np.concatenate([s.ids.numpy() for s in (self.data.train, self.data.val, self.data.test)])
        writer.save_images(ids, self.data.images(ids))

    def run_meta(self, distiller) -> dict:
        extra = distiller.describe() if hasattr(distiller, "describe") else {}
        return {"task": "generation", "source_class": int(self.data.meta["source_class"]),
                "target_class": self.target_class, **extra}

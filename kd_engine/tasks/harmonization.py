"""Image harmonization: a composite (RGB + foreground mask) in, the harmonized RGB image out.

- Batches: ``(x, y)`` with x the (B, 4, H, W) composite and mask, y the (B, 3, H, W) real image;
  order and padding are classification's.
- Rows per training image: the method's per-image values (reconstruction, fMSE, relation loss).
- Evaluation, per split: ``student_mse``, ``student_fmse`` (error over the foreground pixels) and
  ``student_psnr`` (dB, mean over images), and the same for the untouched composite
  (``composite_*``: what doing nothing scores); per image the same columns.
- Artifacts of the final pass (``kind="harmonization"``): for the first ``record.attention_maps``
  images of the split (at most 16), the composites, outputs, real images and masks, and the
  foreground–background relation matrices (foreground positions × 4 background prototypes) of the
  model's encoder on the real image and of its transformed features on the composite.
"""
from __future__ import annotations

import numpy as np
import torch

import kd_engine.methods  # noqa: F401  (registers every method)
from kd_engine.dense_metrics import foreground_mse, image_mse, psnr
from kd_engine.losses.harmonization import relations
from kd_engine.methods.registry import HARMONIZATION_METHODS
from kd_engine.tasks.base import TASKS, Artifact, Batch, Evaluation
from kd_engine.tasks.classification import ClassificationTask

PROBE_LIMIT = 16


def image_scores(real: np.ndarray, pred: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image mse, fmse and psnr of predictions against the real images."""
    return {"mse": image_mse(real, pred), "fmse": foreground_mse(real, pred, mask), "psnr": psnr(real, pred)}


@TASKS.register("harmonization")
class HarmonizationTask(ClassificationTask):
    name = "harmonization"
    methods = HARMONIZATION_METHODS
    headline = ("fmse", "psnr")

    def step_scalars(self, out) -> dict[str, torch.Tensor]:
        return {f"train/{k}": v.float().mean() for k, v in out.per_sample.items()}

    def train_rows(self, out, batch: Batch, step: int, epoch: int) -> dict[str, torch.Tensor]:
        return self.per_sample_rows(out, batch, step, epoch)

    @torch.no_grad()
    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        dataset = getattr(self.data, split)
        was_training = student.training
        student.eval()
        outputs, rel_real, rel_comp = [], [], []
        size = self.cfg.data.eval_batch_size
        probe = min(len(dataset), self.cfg.record.attention_maps, PROBE_LIMIT) if final else 0
        for start in range(0, len(dataset), size):
            x, y = dataset.x[start:start + size].to(self.device), dataset.y[start:start + size].to(self.device)
            with self.autocast():
                out, r_comp, _ = relations(student, x, "transformed")
            outputs.append(out.float().clamp(0, 1).cpu())
            if probe > start:
                _, r_real, _ = relations(student, torch.cat([y, x[:, 3:]], dim=1), "encoder")
                rel_real.append(r_real[: probe - start].float().cpu())
                rel_comp.append(r_comp[: probe - start].float().cpu())
        student.train(was_training)
        pred, real = torch.cat(outputs).numpy(), dataset.y.numpy()
        comp, mask = dataset.x[:, :3].numpy(), dataset.mask.numpy()
        columns = {"instance_id": dataset.ids.numpy()}
        metrics: dict[str, float] = {}
        for role, images in (("student", pred), ("composite", comp)):
            for key, values in image_scores(real, images, mask).items():
                columns[f"{role}_{key}"] = values
                finite = values[np.isfinite(values)]
                metrics[f"{split}/{role}_{key}"] = float(finite.mean()) if finite.size else float("nan")
        artifacts = self._probe(split, dataset, probe, pred, rel_real, rel_comp) if probe else []
        return Evaluation(metrics, columns, artifacts)

    def _probe(self, split, dataset, probe, pred, rel_real, rel_comp) -> list[Artifact]:
        meta = {"instance_ids": dataset.ids[:probe].tolist(), "split": split}
        arrays = {"composite": dataset.x[:probe, :3].numpy(), "output": pred[:probe], "real": dataset.y[:probe].numpy(),
                  "mask": dataset.mask[:probe].numpy(), "relation_real": torch.cat(rel_real).numpy(),
                  "relation_composite": torch.cat(rel_comp).numpy()}
        return [Artifact(f"harmonization/{split}/{name}", value, kind="harmonization", dtype="float32", role="student",
                         meta={**meta, "what": name}) for name, value in arrays.items()]

    def run_meta(self, distiller) -> dict:
        return {"task": "harmonization", "film": type(distiller.student.transformed).__name__ == "FiLM"}

"""Open-vocabulary segmentation: dense prediction whose student never trains on pixel labels.

The method learns from a frozen image–text teacher and the student names pixels zero-shot
(`kd_engine.methods.open_vocab`). Everything the dense task records is recorded the same way
(mIoU and IoU per class over background + classes, pixel accuracy, per-image rows, the probe
images' true and student maps, `kind="dense_map"`); the labels serve evaluation only. On top,
the method's own per-image columns of each evaluated split (``segment_columns``) and, at the
final test pass, its artifacts for the probe images (``segment_artifacts``: assignment maps,
matched tokens, the teacher's reference map). The run's meta says ``task: open_vocab_seg``.
"""
from __future__ import annotations

from kd_engine.methods.open_vocab import OPEN_VOCAB_METHODS
from kd_engine.tasks.base import TASKS, Artifact, Evaluation
from kd_engine.tasks.dense import PROBE_LIMIT, DenseTask


@TASKS.register("open_vocab_seg")
class OpenVocabSegTask(DenseTask):
    name = "open_vocab_seg"
    methods = OPEN_VOCAB_METHODS

    def bind(self, distiller) -> None:
        self.distiller = distiller  # its decisions per evaluated image join the task's records

    def evaluate(self, split, student, teacher, final=False) -> Evaluation:
        result = super().evaluate(split, student, teacher, final=final)
        method = getattr(self, "distiller", None)
        if method is None:
            return result
        columns = {**result.columns, **method.segment_columns(split)}
        artifacts = list(result.artifacts)
        if final:
            probe = min(len(getattr(self.data, split)), self.cfg.record.attention_maps, PROBE_LIMIT)
            artifacts += [Artifact(**spec) for spec in method.segment_artifacts(split, probe)]
        return Evaluation(result.metrics, columns, artifacts)

    def run_meta(self, distiller) -> dict:
        return {**super().run_meta(distiller), "task": self.name}

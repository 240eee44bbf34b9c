"""The group trainer: the classification loop for a distiller that trains a *group* of networks
(ORC's teacher and student groups; any method exposing the same small interface).

On top of `_Loop` it
- evaluates every group member on each evaluation pass and records ``<split>/member/<name>_acc``
  and ``<split>/student_mean_acc`` (the mean over the student group);
- on validation passes, lets the group choose the member it reports as "the student"
  (``distiller.student.select(val accuracies)``): the loop's ``student_acc`` and the student
  checkpoint are that member's, so any selection uses the validation split, never the test split;
- adds the distiller's per-step ``step_stats`` (``role/<name>`` and the like) to the step scalars;
- checkpoints the reported member as ``student.safetensors`` under its own model spec (the whole
  group is in ``state.pt``), and counts its parameters as ``student_params``.

The distiller provides ``group_members() -> {name: module}``, ``student.names``,
``student.select(accuracies)``, ``reported_member() -> (name, module, spec)`` and ``step_stats``.
"""
from __future__ import annotations

from kd_engine.errors import ConfigError
from kd_engine.models import count_parameters
from kd_engine.trainers.checkpoint import save_state, save_weights
from kd_engine.trainers.evaluate import predict
from kd_engine.trainers.loop import _Loop


class GroupLoop(_Loop):
    def __init__(self, cfg, ctx, device, data, distiller, *args):
        if ctx.enabled:
            raise ConfigError(f"method: {cfg.method} trains a group of networks in one process; "
                              "run it without torchrun")
        super().__init__(cfg, ctx, device, data, distiller, *args)

    def _member_accuracies(self, split: str) -> dict[str, float]:
        dataset = getattr(self.data, split)
        batch = self.cfg.data.eval_batch_size
        return {name: predict(member, dataset, self.device, batch, self.autocast).summary()["acc"]
                for name, member in self.distiller.group_members().items()}

    def _evaluate(self, split: str, epoch: int, record: bool = True) -> dict[str, float]:
        accuracies = self._member_accuracies(split)
        students = self.distiller.student.names
        if split == "val":
            self.distiller.student.select({name: accuracies[name] for name in students})
        metrics = super()._evaluate(split, epoch, record)
        metrics.update({f"{split}/member/{name}_acc": acc for name, acc in accuracies.items()})
        metrics[f"{split}/student_mean_acc"] = sum(accuracies[n] for n in students) / len(students)
        return metrics

    def _step_scalars(self, out, loss):
        values = super()._step_scalars(out, loss)
        values.update({key: value.detach().float() for key, value in self.distiller.step_stats.items()})
        return values

    def _checkpoint(self, epoch: int) -> None:
        checkpoints = self.run_dir / "checkpoints"
        save_state(checkpoints / "state.pt", self._state(epoch))
        name, member, spec = self.distiller.reported_member()
        save_weights(member, checkpoints / "student.safetensors",
                     {"model": spec.name, "params": spec.params, "epoch": epoch, "member": name,
                      "data": {"name": self.cfg.data.name, "split_seed": self._split_seed()}})

    def _finish(self) -> None:
        """As `_Loop._finish`, with ``student_params`` counting the reported member, not the group."""
        final: dict[str, float] = {}
        for split in ("val", "test"):
            if len(getattr(self.data, split)):
                final.update(self._evaluate(split, self.cfg.epochs - 1, record=split == "test"))
        self.writer.log_scalars(self.global_step, self.cfg.epochs - 1,
                                {k: v for k, v in final.items() if k.startswith("test/")})
        name, member, _ = self.distiller.reported_member()
        final["student_params"] = float(count_parameters(member))
        self.writer.set_meta(final_metrics=final, reported_student=name)
        self.writer.set_status("finished")
        self.writer.event(f"finished; the reported student is {name} (best validation accuracy)")

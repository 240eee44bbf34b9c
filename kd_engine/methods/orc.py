"""ORC-style group distillation with online role change (paper 27; the whole algorithm is a
*reconstruction*: the paper's code is unpublished, so promotion rule, error set and weights are
our inferred choices).

Networks: T0 (the pretrained teacher, copied and refined here) and a student group S1..Sm. Each
training step (``mode: orc``):

1. rank the students by their batch CE; the top ``promote`` (r = 1) join the teacher group
   G = {T0, promoted} for this step only (demoted when they fall back);
2. the error set E = the samples the student ensemble (mean softmax over S1..Sm) misclassifies;
3. every member of G trains with CE on E (mean over E), T0's term scaled by ``teacher_lr_scale``
   (0.1: under SGD the same as a 0.1x learning rate, apart from weight decay);
4. p_G = mean_{g in G} softmax(z_g / T) (no gradient);
5. every other student minimises CE + T^2 KL(p_G || softmax(z_S / T)), T = 4.

Control arms use the same group: ``independent`` (CE only), ``kd`` (CE + T^2 KL from the frozen
T0), ``dml`` (CE + the mean T^2 KL towards each other student, deep mutual learning with the
same T). Losses are summed over the members; each member's weights get only their own loss.

"The student" the loop evaluates and checkpoints is the student-group member with the best
validation accuracy at the last evaluation (`ORC.evaluation_metrics` selects it on val; the
trainer records and checkpoints `ORC.reported_student`); every member's accuracy and
``student_mean_acc`` are reported too. Roles per step (1 = in
the teacher group, i.e. its outputs were a target this step) go to the store as ``role/<name>``.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt
from torch import nn

from kd_engine.config import ModelSpec
from kd_engine.errors import ConfigError
from kd_engine.losses.logit import kd
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.models import build_model
from kd_engine.params import Param, read_params

MODES = ("orc", "independent", "kd", "dml")
DEFAULTS = {"mode": Param("orc", kind=Literal[MODES]), "students": [{}, {}, {}],
            "temperature": Param(4.0, Gt(0)), "promote": Param(1, Ge(1)), "teacher_lr_scale": Param(0.1, Ge(0))}


def orc_settings(params: dict) -> dict:
    """``distill.params`` with defaults filled in, or a one-line ConfigError naming the field."""
    out = read_params(params, DEFAULTS, "distill.params", "method orc")
    students = out["students"]
    if not isinstance(students, list) or len(students) < 2 or not all(isinstance(s, dict) for s in students):
        raise ConfigError("distill.params.students: a list of at least 2 mappings of student.params "
                          f"overrides (one per group member), got {students!r}")
    promote = out["promote"]
    if not isinstance(promote, int) or isinstance(promote, bool) or not 1 <= promote < len(students):
        raise ConfigError(f"distill.params.promote: an integer in [1, {len(students) - 1}], got {promote!r}")
    return out


class StudentGroup(nn.Module):
    """The student group; its forward is the *reported* member (chosen on validation accuracy)."""

    def __init__(self, members: list[nn.Module], specs: list[ModelSpec]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.specs = specs
        self.names = [f"S{i + 1}" for i in range(len(members))]
        self.register_buffer("reported", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.members[int(self.reported)](x)

    def select(self, accuracies: dict[str, float]) -> str:
        """Report the member with the best accuracy (the first one on ties)."""
        best = max(range(len(self.names)), key=lambda i: (accuracies[self.names[i]], -i))
        self.reported.fill_(best)
        return self.names[best]


def group_target(logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Logits whose softmax at T is p_G = mean_g softmax(z_g / T): T * log p_G (no gradient).
    softmax(T log p / T) = p / sum(p) = p, so the shared `kd` loss distils exactly p_G."""
    probs = torch.stack([(z.detach() / temperature).softmax(1) for z in logits]).mean(0)
    return temperature * probs.clamp_min(1e-30).log()


def error_mask(student_logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """E: samples the student ensemble (mean softmax over the students) misclassifies."""
    probs = torch.stack([z.detach().softmax(1) for z in student_logits]).mean(0)
    return probs.argmax(1) != y


def promoted_indices(ce: torch.Tensor, r: int) -> list[int]:
    """The r students with the lowest batch CE ((M, B) per-sample CE; ties: lower index)."""
    means = ce.detach().mean(1)
    order = sorted(range(len(means)), key=lambda i: (float(means[i]), i))
    return sorted(order[:r])


@METHODS.register("orc")
class ORC(Distiller):
    single_process = True  # the whole group trains in one process

    def __init__(self, cfg, student, teacher, input_shape):
        p = orc_settings(dict(cfg.distill.params))
        specs, members, classes = [], [], _num_classes(student, input_shape)
        for i, override in enumerate(p["students"]):
            spec = ModelSpec(name=cfg.student.name, params={**cfg.student.params, **override})
            members.append(build_model(spec, input_shape, classes, field=f"distill.params.students.{i}"))
            specs.append(spec)
        super().__init__(StudentGroup(members, specs), teacher)
        self.mode, self.T = p["mode"], float(p["temperature"])
        self.r, self.t0_scale = p["promote"], float(p["teacher_lr_scale"])
        self.t0 = None
        if teacher is not None:  # T0, the group's live copy of the pretrained teacher
            self.t0 = copy.deepcopy(teacher)
            for parameter in self.t0.parameters():
                parameter.requires_grad_(self.mode == "orc")
        self.member_names = (["T0"] if self.t0 is not None else []) + self.student.names
        self.train()

    @classmethod
    def requires_teacher(cls, cfg) -> bool:
        """Modes orc and kd distil from the pretrained T0; independent and dml train without one."""
        return orc_settings(dict(cfg.distill.params))["mode"] in ("orc", "kd")

    def train(self, mode: bool = True) -> "ORC":
        """T0 trains (BatchNorm statistics included) only when ORC refines it; else it stays frozen."""
        super().train(mode)
        if self.t0 is not None and self.mode != "orc":
            self.t0.eval()
        return self

    # -- the trainer's hooks ----------------------------------------------------------------------
    def group_members(self) -> dict[str, nn.Module]:
        members = {"T0": self.t0} if self.t0 is not None else {}
        return {**members, **dict(zip(self.student.names, self.student.members))}

    def reported_student(self) -> tuple[str, nn.Module, ModelSpec]:
        index = int(self.student.reported)
        return self.student.names[index], self.student.members[index], self.student.specs[index]

    def evaluation_metrics(self, split: str, task) -> dict[str, float]:
        """Every member's accuracy (``<split>/member/<name>_acc``) and the student group's mean;
        on val, the best student becomes the reported one (never chosen on test)."""
        accuracies = {name: task.predict(member, split).summary()["acc"]
                      for name, member in self.group_members().items()}
        students = self.student.names
        if split == "val":
            self.student.select({name: accuracies[name] for name in students})
        metrics = {f"{split}/member/{name}_acc": acc for name, acc in accuracies.items()}
        metrics[f"{split}/student_mean_acc"] = sum(accuracies[n] for n in students) / len(students)
        return metrics

    # -- one step ------------------------------------------------------------------------------
    def _targets(self, s_logits, t_logits, ce, y):
        """Per learning student i: the logits it distils from (a list: the mean over them), the
        promoted students, and p_G's correctness per sample (ORC only)."""
        m = len(s_logits)
        if self.mode == "orc":
            promoted = promoted_indices(ce, self.r)
            target = group_target([t_logits] + [s_logits[i] for i in promoted], self.T)
            correct = (target.argmax(1) == y).float()
            return {i: [target] for i in range(m) if i not in promoted}, promoted, correct
        if self.mode == "kd":
            return {i: [t_logits.detach()] for i in range(m)}, [], None
        if self.mode == "dml":
            return {i: [s_logits[j].detach() for j in range(m) if j != i] for i in range(m)}, [], None
        return {}, [], None

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        s_logits = [member(x).float() for member in self.student.members]
        t_logits = None
        if self.t0 is not None:
            with torch.set_grad_enabled(self.mode == "orc" and torch.is_grad_enabled()):
                t_logits = self.t0(x).float()
        ce = torch.stack([F.cross_entropy(z, y, reduction="none") for z in s_logits])  # (M, B)
        error = error_mask(s_logits, y)
        targets, promoted, group_correct = self._targets(s_logits, t_logits, ce, y)
        zero = torch.zeros((), device=x.device)
        distill = torch.zeros_like(ce)
        for i, sources in targets.items():
            distill[i] = torch.stack([kd(s_logits[i], t, self.T, reduction="none") for t in sources]).mean(0)
        learners = sorted(targets)
        task_members = learners if self.mode == "orc" else range(len(s_logits))
        losses = {"task": sum(ce[i].mean() for i in task_members),
                  "distill": distill[learners].mean(1).sum() if learners else zero}
        if self.mode == "orc":  # the teacher group G = {T0} + promoted trains with CE on E
            refine = zero
            if error.any():
                refine = self.t0_scale * F.cross_entropy(t_logits[error], y[error])
                refine = refine + sum(F.cross_entropy(s_logits[i][error], y[error]) for i in promoted)
            losses["refine"] = refine
        scalars = self._roles(promoted, error, group_correct, x.device)
        per_sample = {"student_loss": ce.detach().mean(0),
                      "distill_loss": distill[learners].detach().mean(0) if learners else zero.expand(len(y)),
                      "error_sample": error.float(),
                      "refined": error.float() * float(self.mode == "orc"),
                      "promoted_member": torch.full_like(ce[0], float(promoted[0] + 1) if promoted else 0.0)}
        if t_logits is not None:
            per_sample["teacher_loss"] = F.cross_entropy(t_logits.detach(), y, reduction="none")
        if group_correct is not None:
            per_sample["group_correct"] = group_correct
        reported = int(self.student.reported)
        return StepOutput(s_logits[reported], losses, per_sample,
                          t_logits.detach() if t_logits is not None else None, scalars)

    def _roles(self, promoted, error, group_correct, device) -> dict[str, torch.Tensor]:
        """Per step: role/<name> (1 = its outputs were a target this step), the size of E and
        how many of E the teacher group's p_G gets right."""
        students = [1.0 if (i in promoted or self.mode == "dml") else 0.0 for i in range(len(self.student.names))]
        t0 = [float(self.mode in ("orc", "kd"))] if self.t0 is not None else []
        roles = torch.tensor(t0 + students, device=device)
        scalars = {f"role/{name}": roles[k] for k, name in enumerate(self.member_names)}
        right = (group_correct * error).sum() if group_correct is not None else torch.zeros((), device=device)
        scalars.update({"train/error_count": error.sum().float(), "train/group_correct_on_E": right})
        return scalars


@torch.no_grad()
def _num_classes(model: nn.Module, input_shape) -> int:
    """The class count: the width of the configured student's output on one blank input."""
    was_training = model.training
    model.eval()
    width = model(torch.zeros(1, *input_shape)).shape[1]
    model.train(was_training)
    return int(width)

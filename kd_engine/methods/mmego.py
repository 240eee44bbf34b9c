"""MM-Ego-KD (ICCV 2023): an RGB student distilled from an ensemble of modality teachers, each
trusted by how well it does on clips it never trained on.

One frozen teacher per modality m (RGB frames, frame differences, audio; data ``ego_clips``)
trains on the dataset's teacher clips, in a trainer phase before the epochs, and is cached by
the hash of what defines it. Its loss on the student's clips (held out from every teacher) is
ℓ_m(x) = CE(z_m(x), y). The ensemble is z_T = Σ_m w_m z_m with, per ``ensemble``
(`kd_engine.parts.ensemble`):

* ``softmin``: per instance, w(x) = softmax(−ℓ(x)/tau_w) over the teachers (a lower loss on
  this clip, a larger share);
* ``dataset_softmin``: one w = softmax(−mean ℓ/tau_w) for all clips;
* ``uniform``: w_m = 1/K;
* ``best``: all weight on the teacher with the lowest mean held-out loss;
* ``rgb`` / ``flow`` / ``audio``: all weight on that teacher.

The student (RGB frames only) minimises kd_weight·T²·KL(p_T^T ‖ p_S^T) + ce_weight·CE(z_S, y);
kd_weight 0 with ce_weight 1 is the student alone. Recorded per instance: ``weight_<m>`` (the
weight of each teacher), ``loss_<m>`` (its held-out loss), ``teacher_loss`` (the ensemble's CE),
``distill_loss`` and ``student_loss``. Evaluation adds expected calibration error
(``<split>/student_ece``) and, on test, each teacher's accuracy and ECE.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Literal

from annotated_types import Ge, Gt
import torch
import torch.nn.functional as F
from torch import nn

from kd_engine.config import stable_hash
from kd_engine.data import build_data
from kd_engine.errors import ConfigError
from kd_engine.losses.logit import kd
from kd_engine.methods.base import Distiller, Phase, PhaseReport, StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.metrics_extra import ece
from kd_engine.models import build_model
from kd_engine.params import Param, read_params
from kd_engine.parts.ensemble import ensemble_logits, modality_weights
from kd_engine.trainers.checkpoint import load_weights, save_weights

MODALITIES = ("rgb", "flow", "audio")
ENSEMBLES = ("softmin", "dataset_softmin", "uniform", "best", *MODALITIES)
DEFAULTS = {"ensemble": Param("softmin", kind=Literal[ENSEMBLES]), "tau_w": Param(1.0, Gt(0)),
            "temperature": Param(1.0, Gt(0)), "kd_weight": Param(1.0, Ge(0)), "ce_weight": Param(0.0, Ge(0)),
            "teacher_epochs": Param(15, Ge(1)), "teacher_lr": Param(1e-3, Gt(0)),
            "teacher_width": Param(16, Ge(1)), "audio_hidden": Param(64, Ge(1))}


@METHODS.register("mmego")
class MMEgoKD(Distiller):
    needs_teacher = False
    wants_ids = True
    single_process = True  # the teacher phases write one shared cache file per modality

    def __init__(self, cfg, student, teacher, input_shape):
        super().__init__(student, None)
        if teacher is not None:
            raise ConfigError("teacher: method 'mmego' trains its own modality teachers; remove the teacher section")
        self.p = p = read_params(cfg.distill.params, DEFAULTS, "distill.params", "method mmego")
        self.data = build_data(cfg.data, cfg.seed)
        if "modalities" not in self.data.meta:
            raise ConfigError(f"data.name: method 'mmego' needs clips with modalities (ego_clips), "
                              f"got {cfg.data.name!r}")
        self.modality_teachers = nn.ModuleDict()
        self.cache_paths: dict[str, Path] = {}
        self.ready = False
        for k, m in enumerate(MODALITIES):
            x = self.data.meta["modalities"][m]
            spec = (SimpleNamespace(name="mlp", params={"hidden": p["audio_hidden"], "layers": 1}) if x.dim() == 3
                    else SimpleNamespace(name="clip_cnn", params={"width": p["teacher_width"]}))
            with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
                torch.manual_seed(cfg.seed * 31 + k)
                self.modality_teachers[m] = build_model(spec, tuple(x.shape[1:]), self.data.num_classes)
            key = stable_hash({"modality": m, "model": vars(spec), "data": cfg.data.model_dump(mode="json", exclude={"loader"}),
                               "seed": cfg.seed, "epochs": p["teacher_epochs"], "lr": p["teacher_lr"], "v": 1})
            self.cache_paths[m] = Path(cfg.cache_dir) / "mmego" / f"{key}.safetensors"
        self.seed = cfg.seed

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def phases(self, task) -> list[Phase]:
        """Train each modality teacher the cache lacks (on the teacher clips); load the others."""
        meta, phases = self.data.meta, []
        for m in MODALITIES:
            net = self.modality_teachers[m]
            if self.cache_paths[m].is_file():
                load_weights(net, self.cache_paths[m], field="mmego teacher cache")
                net.requires_grad_(False).eval()
            else:
                x = meta["modalities"][m][meta["teacher_ids"]]
                phases.append(self._teacher_phase(m, net, x, meta["teacher_y"], task))
        return phases

    def _teacher_phase(self, m, net, x, y, task) -> Phase:
        parameters = list(net.parameters())
        tally = {"loss": 0.0, "seen": 0}

        def batches():
            generator = torch.Generator().manual_seed(self.seed * 7919 + MODALITIES.index(m))
            net.train()
            for _ in range(self.p["teacher_epochs"]):
                tally.update(loss=0.0, seen=0)
                for idx in torch.randperm(len(y), generator=generator).split(task.cfg.data.batch_size):
                    yield x[idx].to(task.device), y[idx].to(task.device)

        def step(batch) -> StepOutput:
            logits = net(batch[0]).float()
            loss = F.cross_entropy(logits, batch[1])
            tally["loss"] += loss.item() * len(batch[1])
            tally["seen"] += len(batch[1])
            return StepOutput(logits, {f"teacher_{m}": loss})

        def finish() -> PhaseReport:
            net.requires_grad_(False).eval()
            self.cache_paths[m].parent.mkdir(parents=True, exist_ok=True)
            save_weights(net, self.cache_paths[m], {"modality": m, "seed": self.seed})
            return PhaseReport(scalars={f"teachers/{m}_train_loss": tally["loss"] / max(tally["seen"], 1)},
                               event=f"modality teacher {m}: {self.p['teacher_epochs']} epochs on {len(y)} clips")

        return Phase(f"teacher_{m}", torch.optim.Adam(parameters, lr=self.p["teacher_lr"]), parameters,
                     batches, step, finish)

    @torch.no_grad()
    def _prepare(self) -> None:
        """Every teacher's logits on every clip; held-out losses and weights on the student's."""
        mods, train = self.data.meta["modalities"], self.data.train
        device = next(self.student.parameters()).device
        self.modality_teachers.eval()
        logits = torch.stack([self.modality_teachers[m](mods[m].to(device)).float() for m in MODALITIES])
        index = torch.full((len(mods["rgb"]),), -1, dtype=torch.long)
        index[train.ids] = torch.arange(len(train))
        losses = torch.stack([F.cross_entropy(z[train.ids], train.y.to(device), reduction="none")
                              for z in logits], dim=1)
        self.register_buffer("teacher_logits", logits, persistent=False)
        self.register_buffer("index", index.to(device), persistent=False)
        self.register_buffer("losses", losses, persistent=False)
        self.register_buffer("weights", modality_weights(self.p["ensemble"], losses, self.p["tau_w"], MODALITIES),
                             persistent=False)
        self.ready = True

    def begin_epoch(self, epoch: int, total_epochs: int) -> None:
        if not self.ready:  # after the phases, or on resume (the teachers came with the checkpoint)
            self.modality_teachers.requires_grad_(False)
            self._prepare()

    def forward(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> StepOutput:
        pos = self.index[ids]
        logits = self.student(x)
        weights = self.weights[pos]
        teacher = ensemble_logits(self.teacher_logits[:, ids], weights)
        distill = kd(logits.float(), teacher, self.p["temperature"], reduction="none")
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        per_sample = {"student_loss": ce.detach(), "distill_loss": distill.detach(),
                      "teacher_loss": F.cross_entropy(teacher, y, reduction="none"),
                      **{f"weight_{m}": weights[:, k] for k, m in enumerate(MODALITIES)},
                      **{f"loss_{m}": self.losses[pos, k] for k, m in enumerate(MODALITIES)}}
        losses = {"distill": self.p["kd_weight"] * distill.mean(), "task": self.p["ce_weight"] * ce.mean()}
        return StepOutput(logits, losses, per_sample, teacher_logits=teacher)

    def evaluation_metrics(self, split: str, task) -> dict[str, float]:
        pred = task.predict(self.student, split)
        metrics = {f"{split}/student_ece": ece(pred.logits.softmax(1), pred.labels)}
        if split == "test" and self.ready:
            for k, m in enumerate(MODALITIES):
                z = self.teacher_logits[k, pred.ids.to(self.teacher_logits.device)].cpu()
                metrics[f"test/teacher_{m}_acc"] = float((z.argmax(1) == pred.labels).float().mean())
                metrics[f"test/teacher_{m}_ece"] = ece(z.softmax(1), pred.labels)
            for k, m in enumerate(MODALITIES):
                metrics[f"train/heldout_loss_{m}"] = float(self.losses[:, k].mean())
                metrics[f"train/mean_weight_{m}"] = float(self.weights[:, k].mean())
        return metrics

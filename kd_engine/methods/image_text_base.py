"""Methods of two-tower image–text runs (task ``image_text``): their registry, the shared base,
the from-scratch student (`clip_scratch`) and the per-modality embedding baseline (`clip_embed_mse`).

The base reads the student's normalised embeddings I_S = n(f_img(x)), X_S = n(f_txt(tokens)) and,
for a method with a teacher, the cached CLIP stand-in's I_T, X_T (`kd_engine.parts.clip_teacher`,
trained once on the run's training pairs at its split seed; ``needs_teacher`` is False because
the method builds it, not the config's ``teacher`` section). Pairs are not augmented, so the
teacher's embeddings of the training pairs are computed once and looked up by id. The hard
contrastive term is CLIP's InfoNCE at the student's own ``logit_scale``; a distillation method
mixes it as

    L = α·L_distill + (1 − α)·L_InfoNCE        (α = ``alpha``; α = 1 turns InfoNCE off)

and logs α and both scales in the run's metadata. Per pair it records ``student_loss``, and with
a teacher the teacher's in-batch rank (``teacher_rank``) and ``affinity_kl``: the KL between the
teacher's and the student's affinity rows at the distillation scale (0: the rows agree).
"""
from __future__ import annotations

import torch
from annotated_types import Ge, Gt, Interval

from kd_engine.data import build_data
from kd_engine.data.registry import DATASETS
from kd_engine.errors import ConfigError
from kd_engine.losses.image_text import affinity_excess, clip_infonce, embedding_mse
from kd_engine.methods.base import Distiller, StepOutput
from kd_engine.methods.registry import METHODS
from kd_engine.params import Param, read_params
from kd_engine.parts.clip_teacher import cached_clip_teacher
from kd_engine.registry import Registry

IMAGE_TEXT_METHODS: Registry = Registry("image-text method")
TEACHER_DEFAULTS = {"alpha": Param(1.0, Interval(ge=0, le=1)), "scale": Param(50.0, Gt(0)),
                    "teacher_epochs": Param(30, Ge(1))}


class ImageTextDistiller(Distiller):
    """forward(images, tokens, digits) -> StepOutput((B, B) student image→text affinities, ...)."""

    needs_teacher = False
    wants_ids = True  # the teacher's embeddings are looked up per training pair
    uses_teacher = True
    defaults: dict = TEACHER_DEFAULTS

    def __init__(self, cfg, student, teacher, input_shape):
        if getattr(DATASETS.get(cfg.data.name, field="data.name"), "task", "classification") != "image_text":
            raise ConfigError(f"data.name: method {cfg.method} trains image-text pairs; use digit_captions, "
                              f"got {cfg.data.name!r}")
        if not (hasattr(student, "encode_image") and hasattr(student, "encode_text")):
            raise ConfigError(f"student.name: method {cfg.method} needs a two-tower model (two_tower), "
                              f"got {cfg.student.name!r}")
        p = read_params(cfg.distill.params, self.defaults, "distill.params", f"method {cfg.method}")
        teacher, path = None, None
        if self.uses_teacher:
            split_seed = cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed
            teacher, path = cached_clip_teacher(cfg.cache_dir, cfg.data.params, split_seed, cfg.data.val_fraction,
                                                cfg.data.test_fraction, epochs=p["teacher_epochs"])
        super().__init__(student, teacher)
        self.p, self.teacher_path = p, path
        if teacher is not None:
            self.memo_teacher(build_data(cfg.data, cfg.seed).train)
        self.setup(cfg)

    @torch.no_grad()
    def memo_teacher(self, train) -> None:
        """The frozen teacher's embeddings of every training pair, computed once: pairs are not
        augmented, so each step only looks its batch up by instance id (``teacher_rows``)."""
        image = torch.cat([self.teacher.encode_image(train.x[i:i + 512]) for i in range(0, len(train), 512)])
        text = torch.cat([self.teacher.encode_text(train.tokens[i:i + 512]) for i in range(0, len(train), 512)])
        rows = torch.full((int(train.ids.max()) + 1,), -1, dtype=torch.long)
        rows[train.ids] = torch.arange(len(train))
        self.register_buffer("teacher_image", image, persistent=False)
        self.register_buffer("teacher_text", text, persistent=False)
        self.register_buffer("teacher_row", rows, persistent=False)

    def setup(self, cfg) -> None:
        """A subclass's own checks and state, once student and teacher are set."""

    def distill(self, s_img, s_txt, t_img, t_txt) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pair distillation loss and extra per-pair columns (methods with a teacher)."""
        raise NotImplementedError

    def forward(self, x, tokens, y, ids=None) -> StepOutput:
        s_img, s_txt = self.student.encode_image(x), self.student.encode_text(tokens)
        scale = float(self.student.logit_scale)
        logits = scale * s_img @ s_txt.T
        nce = clip_infonce(s_img, s_txt, scale, reduction="none")
        if self.teacher is None:
            return StepOutput(logits, {"infonce": nce.mean()}, {"student_loss": nce.detach()})
        with torch.no_grad():
            rows = self.teacher_row[ids.to(self.teacher_row.device)]
            t_img, t_txt = self.teacher_image[rows], self.teacher_text[rows]
            kl = affinity_excess(s_img, s_txt, t_img, t_txt, self.p["scale"], reduction="none")
            t_logits = t_img @ t_txt.T
            t_rank = 1 + (t_logits > t_logits.diagonal()[:, None]).sum(1)
        distill, extra = self.distill(s_img, s_txt, t_img, t_txt)
        alpha = self.p["alpha"]
        losses = {"distill": alpha * distill.mean()}
        if alpha < 1:
            losses["infonce"] = (1 - alpha) * nce.mean()
        per_pair = {"student_loss": (alpha * distill + (1 - alpha) * nce).detach(), "distill_loss": distill.detach(),
                    "infonce": nce.detach(), "affinity_kl": kl, "teacher_rank": t_rank.float(), **extra}
        return StepOutput(logits, losses, per_pair)

    def describe(self) -> dict:
        out = {"infonce_scale": float(self.student.logit_scale)}
        if self.teacher is not None:
            out.update(alpha=self.p["alpha"], distill_scale=self.p["scale"], clip_teacher=self.teacher_path)
        return out


@METHODS.register("clip_scratch")
@IMAGE_TEXT_METHODS.register("clip_scratch")
class ClipScratch(ImageTextDistiller):
    """The student alone: InfoNCE on the pairs (the from-scratch baseline)."""

    uses_teacher = False
    defaults: dict = {}


@METHODS.register("clip_embed_mse")
@IMAGE_TEXT_METHODS.register("clip_embed_mse")
class ClipEmbedMSE(ImageTextDistiller):
    """Per-modality feature distillation: per pair ½·(‖I_S − I_T‖² + ‖X_S − X_T‖²) of the
    normalised embeddings (needs one embedding width; the towers meet only through the teacher)."""

    def setup(self, cfg) -> None:
        s_dim, t_dim = self.student.text.head.out_features, self.teacher.text.head.out_features
        if s_dim != t_dim:
            raise ConfigError(f"student.params.embed_dim: clip_embed_mse compares embeddings of one width; "
                              f"the teacher's is {t_dim}, got {s_dim}")

    def distill(self, s_img, s_txt, t_img, t_txt):
        return 0.5 * (embedding_mse(s_img, t_img, "none") + embedding_mse(s_txt, t_txt, "none")), {}

"""The frozen image–text teacher as open-vocabulary segmentation reads it: an image encoder, the
class prompt embeddings, the encoder's input size and the name of its cached weights (which keys
the caches built from it). It is the shared small CLIP stand-in (`kd_engine.parts.clip_teacher`),
trained once per cache folder; no weights are downloaded."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from kd_engine.parts.clip_teacher import cached_clip_teacher, class_prompt_embeddings


@dataclass
class ImageTextTeacher:
    encode_image: Callable[[torch.Tensor], torch.Tensor]  # (B, C, S, S) -> (B, D), L2-normalised
    class_text: torch.Tensor  # (classes, D) prompt embeddings, L2-normalised
    image_size: int  # S: views are resized to it
    file_id: str  # the cached weights' name


def shared_image_text_teacher(cache_dir: str | Path, epochs: int | None = None) -> ImageTextTeacher:
    """The shared CLIP stand-in of ``cache_dir`` (trained there on first use). ``epochs`` other
    than None trains a shorter one instead (smoke budgets: plumbing, not a teacher)."""
    model, path = cached_clip_teacher(cache_dir, **({} if epochs is None else {"epochs": int(epochs)}))
    size = int(model.image.patch_embed.kernel_size[0] * round((model.image.num_tokens - 1) ** 0.5))
    return ImageTextTeacher(model.encode_image, class_prompt_embeddings(model).detach(), size, Path(path).stem)

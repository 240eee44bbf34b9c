"""Multi-crop views of images for a frozen image encoder, embedded once and cached (ZeroSeg's
teacher targets, paper 4).

The views of an image are the whole image and the cells of each ``g`` × ``g`` grid in ``grids``
(``(1, 2)``: whole + 4 quarter crops; ``(1, 2, 3)`` adds the 9 ninth crops), in that order. Each
crop is resized (bilinear) to the encoder's input size before it is embedded: an encoder trained
at one resolution sees digits of the size it knows, not a quarter of them. With ``floor`` set,
each view is also rescaled by its own maximum pixel (at least ``floor``), as an encoder trained on
full-contrast digits expects: a digit dimmed in the scene (far away) is shown at full contrast,
while a blank view (maximum below the floor) is not blown up into noise. (Measured on the scenes
with the shared teacher: quarter crops named right 69% of the time without it, 92% with it.)

A crop with no ink (maximum pixel below ``blank_level``) is marked blank: its embedding is kept
(the cache does not depend on the level) but the loss may leave it out, since an empty crop asks
the student to explain nothing. This reads pixels only, never labels.

`cached_view_embeddings` stores (N, V, D) float16 under ``<cache_dir>/crop_views/<hash>.npy``,
the hash naming the encoder's file, the data and the grids; a process writes through a temporary
file of its own (arms running side by side may compute the same cache).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kd_engine.config import stable_hash

CACHE_VERSION = 1


def view_boxes(grids: Sequence[int], height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1) pixel box of every view, in view order. A grid must divide the image."""
    boxes = []
    for g in grids:
        if height % g or width % g:
            raise ValueError(f"grid {g} must divide the image size {height}x{width}")
        h, w = height // g, width // g
        boxes += [(r * h, (r + 1) * h, c * w, (c + 1) * w) for r in range(g) for c in range(g)]
    return boxes


def crop_views(images: torch.Tensor, grids: Sequence[int], size: int, floor: float | None = None) -> torch.Tensor:
    """(N, C, H, W) images -> (N, V, C, size, size) views (whole image and grid cells), each
    resized to ``size`` × ``size`` (bilinear) and, with ``floor``, divided by max(its maximum, floor)."""
    n, c, height, width = images.shape
    crops = [images[:, :, r0:r1, c0:c1] for r0, r1, c0, c1 in view_boxes(grids, height, width)]
    resized = [F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)
               if crop.shape[-2:] != (size, size) else crop for crop in crops]
    views = torch.stack(resized, dim=1)
    if floor is None:
        return views
    return views / views.flatten(2).amax(2).clamp_min(floor)[..., None, None, None]


def blank_views(images: torch.Tensor, grids: Sequence[int], level: float) -> torch.Tensor:
    """(N, V) bool: the view's maximum pixel is below ``level`` (no ink)."""
    boxes = view_boxes(grids, images.shape[2], images.shape[3])
    return torch.stack([images[:, :, r0:r1, c0:c1].flatten(1).amax(1) < level for r0, r1, c0, c1 in boxes], dim=1)


@torch.no_grad()
def embed_views(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, grids: Sequence[int],
                size: int, floor: float | None = None, batch: int = 256) -> torch.Tensor:
    """(N, V, D) L2-normalised encoder embeddings of every view of ``images`` (`crop_views`)."""
    out = []
    for start in range(0, len(images), batch):
        views = crop_views(images[start:start + batch], grids, size, floor)
        n, v = views.shape[:2]
        out.append(F.normalize(encode(views.flatten(0, 1)).float(), dim=-1).reshape(n, v, -1))
    return torch.cat(out) if out else torch.zeros(0, len(view_boxes(grids, *images.shape[2:])), 0)


def cached_view_embeddings(encode: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                           encoder_id: str, identity: Mapping[str, Any], grids: Sequence[int], size: int,
                           cache_dir: str | Path, floor: float | None = None) -> torch.Tensor:
    """`embed_views` of ``images`` (described by ``identity``), computed once per encoder
    (``encoder_id``: e.g. its weight file's stem) and stored as float16."""
    key = stable_hash({"encoder": encoder_id, "data": dict(identity), "grids": list(grids), "size": size,
                       "floor": floor, "version": CACHE_VERSION})
    path = Path(cache_dir) / "crop_views" / f"{key}.npy"
    if path.is_file():
        stored = np.load(path, allow_pickle=False)
        if stored.shape[0] == len(images):
            return torch.from_numpy(stored.astype(np.float32))
    stored = embed_views(encode, images, grids, size, floor).numpy().astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, stored)
    tmp.replace(path)
    return torch.from_numpy(stored.astype(np.float32))  # the stored precision, first time or not

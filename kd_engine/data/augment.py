"""Batch augmentations on image tensors (N, C, H, W), drawn from torch's global RNG (seeded per
run and checkpointed by the loop), for methods that make their own views: a mild random affine
(`jitter`, Cr-KD's two views), MDCS's weak/strong pair, WAD's contrastive views. Each is a pure
function of its inputs and the RNG state."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def jitter(x: torch.Tensor, shift_px: float = 1.0, noise: float = 0.05, rotate_deg: float = 10.0,
           scale: float = 0.1) -> torch.Tensor:
    """One random view of a (B, C, H, W) batch: per image an angle in ±rotate_deg, a scale in
    1 ± scale, a shift of up to ±shift_px pixels per axis (bilinear, zeros outside), plus
    N(0, noise²) pixel noise. All zero gives back ``x`` unchanged."""
    b, _, h, w = x.shape
    angle = (torch.rand(b, device=x.device) * 2 - 1) * math.radians(rotate_deg)
    factor = 1 + (torch.rand(b, device=x.device) * 2 - 1) * scale
    shift = (torch.rand(b, 2, device=x.device) * 2 - 1) * shift_px
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0] * 2 / w], 1),
                         torch.stack([sin, cos, shift[:, 1] * 2 / h], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + noise * torch.randn_like(out) if noise > 0 else out


def random_shift(x: torch.Tensor, max_shift: int = 1) -> torch.Tensor:
    """Translate each image by an integer (dy, dx) in [-max_shift, max_shift], zero-filled."""
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), device=x.device)
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    out = padded.gather(2, rows.expand(n, c, h, padded.size(3)))
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    return out.gather(3, cols.expand(n, c, h, w))


def gaussian_noise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x + sigma * torch.randn_like(x) if sigma > 0 else x


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero one size×size square per image at a uniformly drawn top-left corner (inside the image)."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    top = torch.randint(0, h - size + 1, (n, 1, 1), device=x.device)
    left = torch.randint(0, w - size + 1, (n, 1, 1), device=x.device)
    r = torch.arange(h, device=x.device).view(1, h, 1)
    c = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (r >= top) & (r < top + size) & (c >= left) & (c < left + size)
    return x * (~hole).unsqueeze(1).to(x.dtype)


def random_contrast(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Scale each image's deviation from its own mean by a factor drawn from U(low, high)."""
    if low == high == 1.0:
        return x
    factor = torch.empty(x.size(0), 1, 1, 1, device=x.device).uniform_(low, high)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + factor * (x - mean)


def pixel_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero each pixel independently with probability p."""
    return x * (torch.rand_like(x) >= p).to(x.dtype) if p > 0 else x


def weak_view(x: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """MDCS (paper 16): weak = ±shift px translation."""
    return random_shift(x, shift)


def strong_view(x: torch.Tensor, shift: int = 1, noise: float = 0.15, cutout_size: int = 3,
                contrast: tuple[float, float] = (0.5, 1.5)) -> torch.Tensor:
    """MDCS (paper 16): strong = shift, Gaussian noise σ, a cutout square and random contrast."""
    x = random_contrast(random_shift(x, shift), *contrast)
    return cutout(gaussian_noise(x, noise), cutout_size)


# -- training presets -------------------------------------------------------------------------
# A preset is how a dataset's images become model inputs: per-item torchvision transforms for
# datasets read item by item (a DataLoader), and, for data held in memory as normalised tensors,
# the same training-time augmentation done on a whole batch. `data.augment` names one.

def normalized_fill(mean, std, channels: int) -> torch.Tensor:
    """The normalised value of a black pixel, (1, C, 1, 1): what zero padding becomes."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).expand(channels)
    std_t = torch.as_tensor(std, dtype=torch.float32).expand(channels)
    return (-mean_t / std_t).view(1, channels, 1, 1)


def hflip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    flip = torch.rand(x.size(0), device=x.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def pad_crop(x: torch.Tensor, pad: int, fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """RandomCrop(size, padding=pad) of each image, padding with ``fill`` (per channel): the same
    as translating by an integer offset in [-pad, pad] per axis with the gap filled."""
    return random_shift(x - fill, pad) + fill


def random_resized_crop(x: torch.Tensor, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per image, torchvision's RandomResizedCrop back to the batch's own size (bilinear)."""
    from torchvision.transforms import v2

    size = list(x.shape[-2:])
    crop = v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)
    return torch.stack([crop(image) for image in x])


class Preset:
    """One augmentation and normalisation recipe at ``size`` px with the dataset's mean/std."""

    def __init__(self, name: str, size: int | None, mean, std, channels: int):
        self.name, self.size, self.mean, self.std, self.channels = name, size, mean, std, channels

    def _tail(self):
        from torchvision.transforms import v2

        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]

    def eval_transform(self):
        """PIL image -> normalised (C, H, W) float tensor, deterministic."""
        from torchvision.transforms import v2

        head = []
        if self.size is not None and self.name == "imagenet":
            head = [v2.Resize(round(self.size * 256 / 224), antialias=True), v2.CenterCrop(self.size)]
        elif self.size is not None:
            head = [v2.Resize((self.size, self.size), antialias=True)]
        return v2.Compose(head + self._tail())

    def display_transform(self):
        """Like ``eval_transform`` but in [0, 1] without normalisation: for the gallery."""
        from torchvision.transforms import v2

        return v2.Compose(list(self.eval_transform().transforms[:-1]))

    def train_transform(self):
        """PIL image -> augmented, normalised tensor (read item by item, e.g. by a DataLoader)."""
        from torchvision.transforms import v2

        if self.name == "cifar":  # builders always give the size (the native one by default)
            return v2.Compose([v2.Resize((self.size, self.size), antialias=True),
                               v2.RandomCrop(self.size, padding=pad_for(self.size)),
                               v2.RandomHorizontalFlip()] + self._tail())
        if self.name == "imagenet":
            return v2.Compose([v2.RandomResizedCrop(self.size, antialias=True), v2.RandomHorizontalFlip()]
                              + self._tail())
        return self.eval_transform()

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """The training augmentation on a normalised in-memory batch (N, C, H, W)."""
        if self.name == "cifar":
            fill = normalized_fill(self.mean, self.std, x.shape[1]).to(x.device, x.dtype)
            return hflip(pad_crop(x, pad_for(x.shape[-1]), fill))
        if self.name == "imagenet":
            return hflip(random_resized_crop(x))
        return x


def pad_for(size: int | None) -> int:
    """The CIFAR recipe's padding, 4 px at 32 px, scaled with the image (at least 1 px)."""
    return max(1, round((size or 32) / 8))


AUGMENT_PRESETS = ("none", "cifar", "imagenet")


def make_preset(name: str, size: int | None, mean=(0.0,), std=(1.0,), channels: int = 3) -> Preset:
    from kd_engine.errors import ConfigError

    if name not in AUGMENT_PRESETS:
        raise ConfigError(f"data.augment: unknown preset {name!r} (allowed: {', '.join(AUGMENT_PRESETS)})")
    if name == "imagenet" and size is None:
        raise ConfigError("data.image_size: the imagenet preset needs an image size (e.g. 224)")
    return Preset(name, size, mean, std, channels)

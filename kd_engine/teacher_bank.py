"""The teacher soft-label bank (FKD's cache, used by FerKD, paper 15): for each training image, K
random-resized crops (+ a flip bit) with the teacher's logits for exactly that view, computed once
and stored as memory-mapped ``.npy`` files under ``<cache_dir>/teacher_bank/<key>/``.

The key hashes what defines the bank: the teacher (its cache identity, or the checkpoint file's
bytes), the data split and the view settings. A student run with ``use_teacher_bank: true`` opens an
existing bank without loading the teacher at all; each epoch draws one stored view per image (the
draw depends only on the run seed and the epoch, so a resumed run replays it) and applies exactly
that crop and flip to the image. A bank whose files do not match their recorded checksums, or whose
images are not the run's training split, is refused with one line naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align
from torchvision.transforms import RandomResizedCrop

from kd_engine.config import ExperimentConfig, TeacherBankConfig, stable_hash
from kd_engine.data.loader import require_in_memory
from kd_engine.errors import CheckpointError, ConfigError, DataError

BANK_VERSION = 1
FILES = ("views", "logits", "ids", "labels")  # views: (N, K, 5) int32 = top, left, height, width, flip


def bank_settings(cfg: ExperimentConfig) -> TeacherBankConfig:
    return cfg.teacher_bank or TeacherBankConfig()


def _split_seed(cfg: ExperimentConfig) -> int:
    return cfg.data.split_seed if cfg.data.split_seed is not None else cfg.seed


# -- views -------------------------------------------------------------------------------------
def sample_views(n: int, k: int, height: int, width: int, settings: TeacherBankConfig, seed: int) -> np.ndarray:
    """(n, k, 5) int32 crop boxes (torchvision's RandomResizedCrop draw) and flip bits; the same
    seed gives the same views, and the global torch RNG is left as it was."""
    image = torch.empty(1, height, width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        boxes = [RandomResizedCrop.get_params(image, list(settings.scale), list(settings.ratio))
                 for _ in range(n * k)]
        flips = (torch.rand(n * k) < settings.flip).to(torch.int32)
    views = torch.cat([torch.tensor(boxes, dtype=torch.int32).view(-1, 4), flips[:, None]], dim=1)
    return views.view(n, k, 5).numpy()


def apply_views(x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Crop each image x[b] to views[b] = (top, left, height, width, flip), resize the crop back
    to the image size (bilinear at the output pixel centres, as F.interpolate with
    align_corners=False: the full box is the identity) and flip it."""
    n, _, height, width = x.shape
    v = views.to(device=x.device, dtype=torch.float32)
    top, left, h, w = v[:, 0], v[:, 1], v[:, 2], v[:, 3]
    boxes = torch.stack([torch.arange(n, device=x.device, dtype=torch.float32),
                         left, top, left + w, top + h], dim=1)
    crops = roi_align(x.float(), boxes, (height, width), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    flip = views[:, 4].to(x.device).bool().view(-1, 1, 1, 1)
    return torch.where(flip, crops.flip(-1), crops).to(x.dtype)


def quantize_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    """FKD's label compression: keep the k largest probabilities, share the rest of the mass
    equally among the other classes; returned as log-probabilities (usable as logits)."""
    probs = logits.float().softmax(-1)
    classes = probs.shape[-1]
    if k >= classes:
        return probs.log()
    top, index = probs.topk(k, dim=-1)
    rest = ((1.0 - top.sum(-1, keepdim=True)).clamp_min(0.0) / (classes - k)).expand_as(probs)
    return rest.scatter(-1, index, top).clamp_min(1e-12).log()


# -- the files ---------------------------------------------------------------------------------
def bank_identity(cfg: ExperimentConfig) -> dict:
    from kd_engine.cache import teacher_identity

    assert cfg.teacher is not None
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint)
        if not path.is_file():
            raise CheckpointError(f"teacher.checkpoint: {path} does not exist")
        teacher = {"checkpoint_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                   "model": cfg.teacher.name, "params": cfg.teacher.params}
    else:
        teacher = teacher_identity(cfg)
    data = cfg.data.model_dump(mode="json", exclude={"eval_batch_size", "batch_size"})
    data["split_seed"] = _split_seed(cfg)
    views = bank_settings(cfg).model_dump(mode="json", exclude={"topk", "batch_size", "replay_memory_mb"})
    views["seed"] = views["seed"] if views["seed"] is not None else _split_seed(cfg)
    return {"version": BANK_VERSION, "teacher": teacher, "data": data, "views": views}


def bank_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.cache_dir) / "teacher_bank" / stable_hash(bank_identity(cfg))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@torch.no_grad()
def write_bank(directory: Path, teacher: nn.Module, train, cfg: ExperimentConfig, device) -> Path:
    """Label K views of every training image with the teacher; write the bank atomically."""
    settings = bank_settings(cfg)
    identity = bank_identity(cfg)
    require_in_memory(train, "use_teacher_bank")
    x, n, k = train.x, len(train), settings.views
    views = sample_views(n, k, x.shape[-2], x.shape[-1], settings, identity["views"]["seed"])
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    teacher = teacher.to(device).eval()
    logits = None
    step = max(1, settings.batch_size)
    for start in range(0, n, step):
        xb = x[start:start + step].to(device)
        for view in range(k):
            out = teacher(apply_views(xb, torch.from_numpy(views[start:start + step, view]))).float().cpu()
            if logits is None:
                logits = np.lib.format.open_memmap(tmp / "logits.npy", mode="w+", dtype=np.float32,
                                                   shape=(n, k, out.shape[1]))
            logits[start:start + step, view] = out.numpy()
    logits.flush()
    del logits
    np.save(tmp / "views.npy", views.astype(np.int32))
    np.save(tmp / "ids.npy", train.ids.numpy().astype(np.int64))
    np.save(tmp / "labels.npy", train.y.numpy().astype(np.int64))
    meta = {"identity": identity, "key": directory.name,
            "sha256": {name: _sha256(tmp / f"{name}.npy") for name in FILES}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        tmp.rename(directory)
    except OSError:  # another process wrote the same bank first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


class TeacherBank:
    """An opened bank: arrays memory-mapped read-only, plus the id -> row lookup."""

    def __init__(self, directory: Path, train, topk: int | None = None):
        self.directory, self.topk = Path(directory), topk
        meta_path = self.directory / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
            expected = meta["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"{meta_path}: teacher bank metadata is unreadable; "
                                  f"delete {self.directory} to rebuild the bank") from None
        arrays = {}
        for name in FILES:
            path = self.directory / f"{name}.npy"
            if not path.is_file() or _sha256(path) != expected.get(name):
                raise CheckpointError(f"{path}: teacher bank file is missing or corrupt (checksum "
                                      f"mismatch); delete {self.directory} to rebuild the bank")
            arrays[name] = np.load(path, mmap_mode="r")
        self.views, self.logits = arrays["views"], arrays["logits"]
        # plain ndarray views of the same mapped memory: indexing them skips np.memmap's wrapper
        self._views_array, self._logits_array = np.asarray(self.views), np.asarray(self.logits)
        self.ids, self.labels = np.array(arrays["ids"]), np.array(arrays["labels"])
        self.meta = meta
        if (not np.array_equal(self.ids, train.ids.numpy()) or not np.array_equal(self.labels, train.y.numpy())
                or self.views.shape[:2] != self.logits.shape[:2]):
            raise DataError(f"{self.directory / 'ids.npy'}: the teacher bank was built for other training "
                            f"images than this run's split; delete {self.directory} to rebuild it")
        self.num_views = int(self.views.shape[1])
        self._sorted, self._order = torch.sort(torch.from_numpy(self.ids))
        self._tables: dict[tuple[int, int, int], torch.Tensor] = {}

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.cpu()
        pos = torch.searchsorted(self._sorted, ids).clamp_max(len(self._sorted) - 1)
        if not torch.equal(self._sorted[pos], ids):
            raise DataError(f"{self.directory / 'ids.npy'}: an instance id of the batch is not in the bank")
        return self._order[pos]

    def draw(self, rows: torch.Tensor, seed: int, epoch: int, count: int = 1) -> torch.Tensor:
        """(B, count) distinct view indices; a function of (seed, epoch, row) only."""
        key = (seed, epoch, count)
        if key not in self._tables:
            self._tables = {}  # one epoch at a time
            g = torch.Generator().manual_seed(seed * 100_003 + epoch + 1_000_000_007)
            n, k = len(self.ids), self.num_views
            first = torch.randint(k, (n,), generator=g)
            cols = [first]
            if count > 1:  # a second, different view of the same image (SelfMix)
                cols.append((first + 1 + torch.randint(max(k - 1, 1), (n,), generator=g)) % k)
            self._tables[key] = torch.stack(cols, dim=1)
        return self._tables[key][rows.cpu()]

    def lookup(self, rows: torch.Tensor, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored crop parameters (B, 5) and teacher logits (B, C) of the given views
        (quantised to top-k log-probabilities when ``teacher_bank.topk`` is set)."""
        r, v = rows.cpu().numpy(), views.cpu().numpy()
        return torch.from_numpy(self._views_array[r, v]), self.logits_of(rows, views)

    def logits_of(self, rows: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        logits = torch.from_numpy(self._logits_array[rows.cpu().numpy(), views.cpu().numpy()])
        return quantize_topk(logits, self.topk) if self.topk else logits

    def all_crops(self, images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """(N, K, C, H, W): every stored view of every training image (row order = bank order),
        cut exactly as `apply_views` cuts a batch."""
        n, k = len(self.ids), self.num_views
        crops = torch.empty((n, k, *images.shape[1:]), dtype=images.dtype)
        for start in range(0, n, chunk):
            block = images[start:start + chunk]
            for view in range(k):
                params = torch.from_numpy(self._views_array[start:start + chunk, view].copy())
                crops[start:start + chunk, view] = apply_views(block, params)
        return crops

    def target_probs(self) -> torch.Tensor:
        """p_T[y] of every stored view, (N, K) (read once, e.g. for a calibration rule)."""
        probs = torch.from_numpy(np.array(self.logits)).float()
        probs = quantize_topk(probs, self.topk).exp() if self.topk else probs.softmax(-1)
        labels = torch.from_numpy(self.labels).view(-1, 1, 1).expand(-1, probs.shape[1], 1)
        return probs.gather(2, labels).squeeze(2)


def prepare_bank(cfg: ExperimentConfig, data, device, build_teacher, is_main: bool = True,
                 barrier=lambda: None) -> TeacherBank:
    """Open this config's bank, building it first if it is missing, with the teacher that
    ``build_teacher() -> (teacher, source)`` trains or loads."""
    directory = bank_dir(cfg)
    if not (directory / "meta.json").is_file() and is_main:
        teacher, _ = build_teacher()
        directory.parent.mkdir(parents=True, exist_ok=True)
        write_bank(directory, teacher, data.train, cfg, device)
        del teacher
    barrier()
    return TeacherBank(directory, data.train, bank_settings(cfg).topk)


# -- any logit distiller on the bank -----------------------------------------------------------
class ReplayTeacher(nn.Module):
    """Stands in for the teacher inside a wrapped distiller: its output is the bank's logits
    for the batch the wrapper just drew (it never sees a model)."""

    def __init__(self):
        super().__init__()
        self.pending: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, self.pending = self.pending, None
        if logits is None or len(logits) != len(x):
            raise RuntimeError("ReplayTeacher: no bank logits for this batch")
        return logits.to(x.device)


class BankDistiller(nn.Module):
    """Runs a logit distiller (e.g. `standard`) on the bank: crops the batch to one stored view
    per image and hands the distiller the stored logits as its teacher's output."""

    wants_ids = True
    teacher = None  # the loop evaluates no teacher: there is none in this process

    def __init__(self, inner: nn.Module, bank: TeacherBank, seed: int, images: torch.Tensor | None = None):
        """`images`: the training images in bank order; given, every stored crop is cut once here
        and a step only indexes them (the batch's own pixels are then not read again)."""
        super().__init__()
        self.inner, self.bank, self.seed, self.epoch = inner, bank, seed, 0
        self.register_buffer("view_conf", bank.target_probs(), persistent=False)  # (N, K) p_T[y]
        self.register_buffer("crops", None if images is None else bank.all_crops(images), persistent=False)
        self._epoch_views: tuple | None = None  # (epoch, views, crops, logits) of every row

    @property
    def student(self) -> nn.Module:
        return self.inner.student

    def begin_epoch(self, epoch: int, total_epochs: int) -> None:
        self.epoch = epoch
        self.inner.begin_epoch(epoch, total_epochs)

    def after_step(self, step: int, epoch: int) -> None:
        self.inner.after_step(step, epoch)

    def trainable_parameters(self):
        return self.inner.trainable_parameters()

    # -- the trainer's other hooks go to the wrapped distiller (the teacher is the bank) ----------
    def check_data(self, data) -> None:
        self.inner.check_data(data)

    def phases(self, task) -> list:
        return self.inner.phases(task)

    def evaluation_metrics(self, split: str, task) -> dict:
        return self.inner.evaluation_metrics(split, task)

    def epoch_metrics(self, task) -> dict:
        return self.inner.epoch_metrics(task)

    def reported_student(self):
        return self.inner.reported_student()

    def feature_pairs(self) -> list:
        return []  # no teacher features: the bank stores logits only

    def weighting_state(self) -> dict:
        return self.inner.weighting_state()

    def load_weighting_state(self, state: dict) -> None:
        self.inner.load_weighting_state(state)

    def replay(self, x: torch.Tensor, ids: torch.Tensor):
        """This epoch's stored view of each image: (cropped x, stored logits, rows, views)."""
        rows = self.bank.rows(ids)
        if self.crops is not None:  # the epoch's view of every image, gathered once per epoch
            views, crops, logits = self._views_of_epoch()
            at = rows.to(crops.device)
            return crops[at].to(x.dtype), logits[at].to(x.device), rows, views[rows]
        view = self.bank.draw(rows, self.seed, self.epoch)[:, 0]
        params, logits = self.bank.lookup(rows, view)
        return apply_views(x, params), logits.to(x.device), rows, view

    def _views_of_epoch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._epoch_views is None or self._epoch_views[0] != self.epoch:
            every = torch.arange(len(self.bank.ids))
            views = self.bank.draw(every, self.seed, self.epoch)[:, 0]
            crops = self.crops[every.to(self.crops.device), views.to(self.crops.device)]
            self._epoch_views = (self.epoch, views, crops, self.bank.logits_of(every, views).to(crops.device))
        return self._epoch_views[1:]

    def forward(self, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor):
        x, self.inner.teacher.pending, rows, view = self.replay(x, ids)
        out = self.inner(x, y)
        out.per_sample.update(bank_view=view.to(y.device, torch.float32),
                              bank_conf_y=self.view_conf[rows, view].to(y.device))
        return out


def bank_distiller(cfg: ExperimentConfig, method, student: nn.Module, data, bank: TeacherBank) -> nn.Module:
    """The distiller of a `use_teacher_bank: true` run: native bank methods get the bank, logit
    methods are wrapped."""
    torch.manual_seed(cfg.seed + 1)  # as `train` does before building a distiller
    if method.bank_mode == "native":
        distiller = method(cfg, student, None, data.input_shape)
        distiller.attach_bank(bank)
        return distiller
    require_in_memory(data.train, "use_teacher_bank")
    images = data.train.x
    crops_mb = images[0].numel() * images.element_size() * len(bank.ids) * bank.num_views / 2**20
    precut = images if crops_mb <= bank_settings(cfg).replay_memory_mb else None
    return BankDistiller(method(cfg, student, ReplayTeacher(), data.input_shape), bank, cfg.seed, precut)

"""The teacher-checkpoint cache: teachers trained once by this engine and stored by the hash of
what defines them.

A student run whose teacher (model, data split, training settings) was seen before loads the
cached weights instead of retraining. Teacher training is an ordinary `scratch` run, so it is
recorded in the run store like any other run; the caller (`kd_engine.run.build_teacher`) hands
in the function that trains it, so this module never imports the trainer.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import nn

from kd_engine.config import ExperimentConfig, ModelSpec, RecordConfig, stable_hash
from kd_engine.errors import CheckpointError
from kd_engine.models import build_model
from kd_engine.models.cross_fit import CrossFitTeacher
from kd_engine.trainers.checkpoint import load_weights, read_metadata

try:  # POSIX; elsewhere concurrent runs may train the same teacher twice (the cache stays valid)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CACHE_VERSION = 1


def teacher_data(cfg: ExperimentConfig):
    """The data config the teacher trains on: ``teacher.data`` if set, else the run's."""
    return cfg.teacher.data if cfg.teacher.data is not None else cfg.data


def teacher_identity(cfg: ExperimentConfig) -> dict[str, Any]:
    """Everything that changes the teacher's weights, and nothing else."""
    assert cfg.teacher is not None
    source = teacher_data(cfg)
    data = source.model_dump(mode="json", exclude={"eval_batch_size", "download", "loader"})
    if data.get("augment") == "none":  # settings added later leave older teachers' hashes alone
        del data["augment"]
    if data.get("holdout_fold") is None:
        data.pop("holdout_fold", None)
    data["split_seed"] = source.split_seed if source.split_seed is not None else cfg.seed
    train = cfg.teacher.train.model_dump(mode="json")
    if train["grad_clip"] is None:  # settings added later leave older teachers' hashes alone
        del train["grad_clip"]
    if not train["schedule"]["warmup_iters"]:
        del train["schedule"]["warmup_iters"]
    return {"version": CACHE_VERSION, "model": cfg.teacher.name, "params": cfg.teacher.params,
            "data": data, "train": train}


def teacher_cache_path(cfg: ExperimentConfig) -> Path:
    return Path(cfg.cache_dir) / "teachers" / f"{stable_hash(teacher_identity(cfg))}.safetensors"


def teacher_training_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The scratch run that trains this config's teacher."""
    assert cfg.teacher is not None
    identity = teacher_identity(cfg)
    settings = cfg.teacher.train
    data = teacher_data(cfg).model_copy(update={"split_seed": identity["data"]["split_seed"]})
    return ExperimentConfig(
        name=f"teacher-{cfg.teacher.name}-{stable_hash(identity)[:8]}", method="scratch",
        seed=settings.seed, device=cfg.device, amp=cfg.amp, epochs=settings.epochs,
        grad_clip=settings.grad_clip, eval_every=cfg.eval_every, threads=cfg.threads, data=data,
        student=ModelSpec(name=cfg.teacher.name, params=cfg.teacher.params),
        optimizer=settings.optimizer, schedule=settings.schedule,
        record=RecordConfig(instances=cfg.record.instances, features=[], attention_maps=0,
                            tensorboard=cfg.record.tensorboard),
        runs_dir=cfg.runs_dir, cache_dir=cfg.cache_dir)


def check_spec(path: Path, cfg: ExperimentConfig) -> None:
    """A checkpoint records the model it was saved from; refuse one made for another model."""
    assert cfg.teacher is not None
    try:
        meta = read_metadata(path)
    except Exception:
        return  # load_weights reports unreadable files with a clearer message
    model = meta.get("model")
    if model and (model != cfg.teacher.name or meta.get("params", {}) != cfg.teacher.params):
        raise CheckpointError(
            f"teacher.checkpoint: {path} holds a {model} {meta.get('params')}, but the config asks "
            f"for {cfg.teacher.name} {cfg.teacher.params}")
    # A teacher trained on another split has seen this run's test images: refuse it.
    trained_on = meta.get("data") or {}
    source = teacher_data(cfg)
    split_seed = source.split_seed if source.split_seed is not None else cfg.seed
    if trained_on and (trained_on.get("name") != source.name or trained_on.get("split_seed") != split_seed):
        raise CheckpointError(
            f"teacher.checkpoint: {path} was trained on {trained_on.get('name')} split seed "
            f"{trained_on.get('split_seed')}, but this run uses {cfg.data.name} split seed {split_seed}; "
            "set data.split_seed to match, or drop teacher.checkpoint to train a cached teacher")


def build_teacher(cfg: ExperimentConfig, input_shape, num_classes: int, is_main: bool = True,
                  barrier=lambda: None, *, train_teacher: Callable[[ExperimentConfig], Path]
                  ) -> tuple[nn.Module | None, str | None]:
    """Return the frozen teacher and where its weights came from (None when there is none).
    ``train_teacher(config) -> run directory`` trains a teacher the cache lacks."""
    if cfg.teacher is None:
        return None, None
    if cfg.teacher.cross_fit:
        return _cross_fitted(cfg, input_shape, num_classes, is_main, barrier, train_teacher)
    model = build_model(cfg.teacher, input_shape, num_classes, field="teacher")
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint)
        if path.is_file():
            check_spec(path, cfg)
        load_weights(model, path, field="teacher.checkpoint", strict=cfg.teacher.strict)
        return model.eval(), str(path)
    path = teacher_cache_path(cfg)
    if is_main:
        _train_cached(cfg, path, train_teacher, wait=True)
    barrier()
    load_weights(model, path, field="teacher cache")
    return model.eval(), str(path)


@contextlib.contextmanager
def _training_lock(path: Path, wait: bool) -> Iterator[bool]:
    """Held while the teacher cached at ``path`` trains, so concurrent runs that need the same
    teacher (a notebook's workers) wait for it instead of training it twice. Yields whether the
    lock is held: False only with ``wait=False`` while another process holds it."""
    if fcntl is None:
        yield True
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_cached(cfg: ExperimentConfig, path: Path, train_teacher, wait: bool) -> None:
    """Train the teacher into the cache unless it is there, or (``wait=False``) another process
    is training it right now."""
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with _training_lock(path, wait) as held:
        if not held or path.is_file():  # trained by the process this one waited for
            return
        run_dir = train_teacher(teacher_training_config(cfg))
        tmp = path.with_name(path.name + ".tmp")
        shutil.copyfile(run_dir / "checkpoints" / "student.safetensors", tmp)
        tmp.replace(path)


def fold_config(cfg: ExperimentConfig, fold: int) -> ExperimentConfig:
    """The config whose (cached) teacher is cross-fitted teacher ``fold``: trained on the run's
    training images without fold ``fold``, every other setting the run's."""
    assert cfg.teacher is not None and cfg.teacher.cross_fit
    data = cfg.data.model_copy(update={"holdout_fold": (fold, cfg.teacher.cross_fit)})
    teacher = cfg.teacher.model_copy(update={"cross_fit": None, "data": data})
    return cfg.model_copy(update={"teacher": teacher})


def _cross_fitted(cfg, input_shape, num_classes, is_main, barrier, train_teacher):
    configs = [fold_config(cfg, k) for k in range(cfg.teacher.cross_fit)]
    if is_main:  # first the folds no other process is training, then wait for those it is
        for fold_cfg in configs:
            _train_cached(fold_cfg, teacher_cache_path(fold_cfg), train_teacher, wait=False)
    folds, sources = [], []
    for fold_cfg in configs:
        model, source = build_teacher(fold_cfg, input_shape, num_classes, is_main, barrier,
                                      train_teacher=train_teacher)
        folds.append(model)
        sources.append(source)
    return CrossFitTeacher(folds).eval(), "cross-fit: " + ", ".join(sources)

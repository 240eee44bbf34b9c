"""Fingerprints of six shipped configs at tiny CPU sizes (fixed seed, one thread): the sha256 of
the final student weights and of every recorded instance row. A refactor of the engine must leave
them unchanged; `tests/test_refactor_identity.py` compares them with the values committed in
`tests/data/refactor_identity.json`.

Run ``python tests/refactor_identity.py --write`` (from the repository root, PYTHONPATH set) to
record new values, and say in the commit message why they changed.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
EXPECTED = REPO / "tests" / "data" / "refactor_identity.json"

_DIGITS_SMALL = ["threads=1", "device=cpu", "record.tensorboard=false", "epochs=1",
                 "data.val_fraction=0.3", "data.test_fraction=0.6"]
_DETECTION_SMOKE = ["data.params.n_train=4", "data.params.n_val=2", "data.params.n_test=2",
                    "data.params.image_size=64", "data.batch_size=2", "data.eval_batch_size=4",
                    "epochs=1", "threads=1", "device=cpu", "teacher.train.epochs=1",
                    "teacher.params.width=4", "teacher.params.depth=1", "teacher.params.fpn_channels=8",
                    "student.params.width=4", "student.params.fpn_channels=8",
                    "schedule.warmup_iters=2", "teacher.train.schedule.warmup_iters=2",
                    "record.tensorboard=false"]

# config name -> overrides (applied in order to the shipped file)
CASES: dict[str, list[str]] = {
    "digits_kd": [*_DIGITS_SMALL, "teacher.train.epochs=1", "teacher.params.width=8"],
    "aid_retinanet": _DETECTION_SMOKE,
    "aid_fasterrcnn": _DETECTION_SMOKE,
    "orc_digits": [*_DIGITS_SMALL, "epochs=2", "teacher.train.epochs=1"],
    "crkd_digits": [*_DIGITS_SMALL, "data.val_fraction=0.0", "data.test_fraction=0.8",
                    "distill.params.stage1_epochs=1", "student.params.width=4", "student.params.heads=2"],
    "ferkd_digits": [*_DIGITS_SMALL, "teacher.train.epochs=1", "teacher.params.width=8",
                     "teacher_bank.views=2", "distill.params.selfmix=0.5"],
}


def weights_hash(path: Path) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order (file metadata such
    as the epoch is left out: only the numbers count)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


# Columns recorded by features added after the baseline (AID's label-noise flags and the teacher's
# top background score). They are new information, not a change of what the unchanged engine
# recorded, so the identity covers every other column; the hashes stay those of 5520d57.
ADDED_COLUMNS = ("label_noise", "noisy", "teacher_top_bg")


def rows_hash(frame) -> str:
    """sha256 of the instance rows, columns in name order and rows sorted by every column, each
    value written exactly (floats as their repr, NaN as 'nan')."""
    frame = frame[sorted(c for c in frame.columns if c not in ADDED_COLUMNS)]
    frame = frame.sort_values(list(frame.columns), kind="mergesort", na_position="last")
    digest = hashlib.sha256("|".join(frame.columns).encode())
    for row in frame.itertuples(index=False):
        digest.update(("\n" + "|".join(_exact(v) for v in row)).encode())
    return digest.hexdigest()


def _exact(value) -> str:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


def fingerprint(name: str, workdir: Path) -> dict[str, str]:
    from kd_engine.config import apply_override, load_raw, validate
    from kd_engine.store import open_run
    from kd_engine.run import train

    raw = load_raw(REPO / "configs" / f"{name}.yaml")
    for assignment in [*CASES[name], f"runs_dir={workdir / 'runs'}", f"cache_dir={workdir / 'cache'}"]:
        apply_override(raw, assignment)
    torch.set_num_threads(1)
    run = open_run(train(validate(raw), distributed=False))
    assert run.status() == "finished", run.status()
    return {"student": weights_hash(run.checkpoint_path("student")),
            "instances": rows_hash(run.instances(split=None)),
            "rows": str(run.count_instances())}


def fingerprints(names=None) -> dict[str, dict[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        return {name: fingerprint(name, Path(tmp) / name) for name in (names or CASES)}


if __name__ == "__main__":
    result = fingerprints()
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    if "--write" in sys.argv:
        EXPECTED.parent.mkdir(parents=True, exist_ok=True)
        EXPECTED.write_text(text)
    print(text)

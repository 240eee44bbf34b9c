"""Fingerprints of six shipped configs at tiny CPU sizes (fixed seed, one thread): the final
student weights and every recorded instance row. A refactor of the engine must leave them
unchanged; `tests/test_refactor_identity.py` compares them with the values committed in
`tests/data/refactor_identity.json`.

Why probes and not sha256 of the bytes: the float rounding of PyTorch's CPU kernels depends on
the CPU (AVX2 or AVX-512, the vendor's code path in oneDNN), so a byte hash recorded on one
machine failed on another with the engine unchanged. Each tensor and each recorded column is
reduced to three numbers (`_probe`) and compared to a relative tolerance of the tensor's norm
(`RTOL`): the same code on AVX2 and AVX-512 differs by at most ~2e-6 here (distillation losses,
which lose digits to cancellation, by 1.1e-4: `RTOL_DISTILL`), while any change of the training
(a loss, the order of random draws, a skipped step) moves them by far more. Which
rows are recorded (split, epoch, step, instance id) is still compared exactly.

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


def _probe(values: np.ndarray) -> list[float]:
    """Three numbers that move with any real change of ``values`` and only in the last digits
    with the CPU's float rounding: the sum, the L2 norm and a projection on a fixed +-1 pattern."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    signs = np.random.default_rng(len(flat)).choice([-1.0, 1.0], size=len(flat))
    return [float(flat.sum()), float(np.sqrt((flat ** 2).sum())), float(flat @ signs)]


def weights_probe(path: Path) -> dict[str, list[float]]:
    """`_probe` of every tensor of a checkpoint, by name."""
    return {name: _probe(tensor.double().numpy()) for name, tensor in sorted(load_file(str(path)).items())}


# Columns recorded by features added after the baseline (AID's label-noise flags and the teacher's
# top background score). They are new information, not a change of what the unchanged engine
# recorded, so the identity covers every other column; the hashes stay those of 5520d57.
ADDED_COLUMNS = ("label_noise", "noisy", "teacher_top_bg")


KEYS = ["split", "epoch", "step", "instance_id"]
RTOL = 1e-4  # of a probe's L2 norm; AVX2 against AVX-512 on one engine: <= 2e-6
# Distillation losses per instance (a KL divergence between near-equal distributions) are
# differences of near-equal numbers: their rounding error is relative to the cross-entropy's
# scale, not to their own small values. One engine on an Intel AVX-512 and an AMD AVX2 machine:
# 1.1e-4 of the norm for digits_kd's distill_loss, <= 2e-6 for every other column and weight.
RTOL_DISTILL = 1e-3


def rows_probe(frame) -> dict[str, object]:
    """The instance rows, in (split, epoch, step, instance id) order: the key columns exactly (a
    sha256), every other column as `_probe` of its values (NaN as 0) and its count of NaN, so a
    change of which rows are recorded or of any value shows while the CPU's rounding does not."""
    frame = frame[sorted(c for c in frame.columns if c not in ADDED_COLUMNS)]
    frame = frame.sort_values([k for k in KEYS if k in frame.columns], kind="mergesort").reset_index(drop=True)
    keys = "\n".join("|".join(str(v) for v in row) for row in frame[[k for k in KEYS if k in frame]].itertuples(index=False))
    probe: dict[str, object] = {"keys": hashlib.sha256(keys.encode()).hexdigest()}
    for column in frame.columns:
        if column not in KEYS:
            values = frame[column].to_numpy(dtype=np.float64)
            probe[column] = [*_probe(np.nan_to_num(values, nan=0.0)), float(np.isnan(values).sum())]
    return probe


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
    return {"student": weights_probe(run.checkpoint_path("student")),
            "instances": rows_probe(run.instances(split=None)),
            "rows": run.count_instances()}


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


def differences(measured: dict, expected: dict) -> list[str]:
    """What differs between two fingerprints of one config beyond the rounding tolerance."""
    problems = []
    if measured["rows"] != expected["rows"]:
        problems.append(f"{measured['rows']} instance rows, expected {expected['rows']}")
    if measured["instances"]["keys"] != expected["instances"]["keys"]:
        problems.append("other (split, epoch, step, instance id) rows were recorded")
    for part in ("student", "instances"):
        got, want = measured[part], expected[part]
        if set(got) != set(want):
            problems.append(f"{part}: names differ: {sorted(set(got) ^ set(want))[:5]}")
        for key in sorted(set(got) & set(want) - {"keys"}):
            scale = max(abs(want[key][1]), 1e-12)
            worst = max(abs(a - b) for a, b in zip(got[key][:3], want[key][:3])) / scale
            rtol = RTOL_DISTILL if part == "instances" and (key == "distill_loss" or key.startswith("term_")) else RTOL
            if worst > rtol or got[key][3:] != want[key][3:]:  # the count of NaN, exactly
                problems.append(f"{part} {key}: {got[key]} against {want[key]} (relative {worst:.1e} > {rtol:g})")
    return problems

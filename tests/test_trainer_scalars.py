"""The steps' scalars as written: kept per step as references, turned into rows per span
(kd_engine/trainers/scalars.py)."""
from __future__ import annotations

import pytest
import torch

from kd_engine.trainers.scalars import scalar_rows, scalar_table


def _step(loss: float, per_sample: list[float], extra: dict | None = None):
    names = ("train/loss", "train/student_loss", *(extra or {}))
    values = (torch.tensor(loss), torch.tensor(per_sample), *(torch.tensor(v) for v in (extra or {}).values()))
    return names, values, 0.1


def test_scalars_are_kept_and_per_sample_values_averaged():
    pending = [(0, _step(1.0, [1.0, 3.0])), (1, _step(2.0, [2.0, 4.0])), (2, _step(3.0, [5.0]))]  # last batch smaller
    rows = list(scalar_rows(pending))
    assert [step for step, _ in rows] == [0, 1, 2]
    assert [r["train/student_loss"] for _, r in rows] == pytest.approx([2.0, 3.0, 5.0])
    assert [r["train/loss"] for _, r in rows] == pytest.approx([1.0, 2.0, 3.0])
    assert all(r["lr"] == 0.1 for _, r in rows)


def test_a_scalar_present_on_some_steps_only_starts_a_new_span():
    pending = [(0, _step(1.0, [1.0])), (1, _step(2.0, [2.0], {"role/S1": 1.0})), (2, _step(3.0, [3.0]))]
    rows = dict(scalar_rows(pending))
    assert "role/S1" not in rows[0] and rows[1]["role/S1"] == 1.0 and "role/S1" not in rows[2]
    assert rows[2]["train/loss"] == 3.0


def test_mixed_dtypes_are_promoted():
    steps = [(torch.tensor(1.5, dtype=torch.bfloat16), torch.tensor(2.0)), (torch.tensor(2.5, dtype=torch.bfloat16), torch.tensor(4.0))]
    table = scalar_table(steps)
    assert table.dtype == torch.float32 and table.tolist() == [[1.5, 2.0], [2.5, 4.0]]

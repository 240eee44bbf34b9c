"""The training steps' scalars, from what each step kept to the rows the store writes.

A step keeps references only (`Trainer._step_scalars`: names, detached tensors, the learning
rate), because a tensor operation per scalar per step was a measurable share of a small model's
step. Here a span of steps becomes one table with a few stacks: 0-d values as they are, 1-d ones
(per sample) as their means.
"""
from __future__ import annotations

from typing import Iterator

import torch


def scalar_rows(pending: list[tuple[int, tuple]]) -> Iterator[tuple[int, dict[str, float]]]:
    """(step, {name: value}) for each pending ``(step, (names, tensors, lr))``, a run of steps
    with the same names at a time (a method may add a scalar on some steps only)."""
    start = 0
    while start < len(pending):
        names = pending[start][1][0]
        end = start + 1
        while end < len(pending) and pending[end][1][0] == names:
            end += 1
        span = pending[start:end]
        table = scalar_table([values for _, (_, values, _) in span]).tolist()
        for (step, (_, _, lr)), row in zip(span, table):
            yield step, {**dict(zip(names, row)), "lr": lr}
        start = end


def scalar_table(steps: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """(steps, scalars) float32 on the CPU from each step's tensors (the same names in the same
    order). torch.stack promotes mixed dtypes (bf16 losses beside float32 ones); the per-sample
    values are averaged with one stack per run of steps with the same batch size (an epoch's
    last batch may be smaller)."""
    first = steps[0]
    table = torch.empty(len(steps), len(first))
    scalar = [j for j, v in enumerate(first) if v.dim() == 0]
    sample = [j for j, v in enumerate(first) if v.dim() != 0]
    with torch.no_grad():
        if scalar:
            values = torch.stack([values[j] for values in steps for j in scalar]).float().cpu()
            table[:, scalar] = values.view(len(steps), len(scalar))
        start = 0
        while sample and start < len(steps):  # runs of steps whose per-sample values share a shape
            shapes = {steps[start][j].shape for j in sample}
            end = start + 1
            while end < len(steps) and {steps[end][j].shape for j in sample} == shapes:
                end += 1
            flat = [values[j] for values in steps[start:end] for j in sample]
            if len(shapes) == 1:  # one stack for the run (an epoch's smaller last batch is a run of its own)
                means = torch.stack(flat).float().flatten(1).mean(1)
            else:
                means = torch.stack([v.float().mean() for v in flat])
            table[start:end, sample] = means.cpu().view(end - start, len(sample))
            start = end
    return table

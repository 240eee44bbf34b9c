"""The trained student outside the workbench: ``load_student(run)`` and ``kdw export``.

``load_student`` rebuilds the student from the spec stored with the run (the registry name and
params, e.g. ``torchvision`` + ``{arch: mobilenet_v3_small}``) on the run's input shape and
classes, loads its final weights and returns a plain ``nn.Module`` in eval mode: for torchvision
and timm students it is the library's own class. ``export_student`` writes it as safetensors
(weights plus the spec, to rebuild it), TorchScript (a traced graph that runs without this
package) or ONNX (``torch.onnx.export``; needs the ``onnx``/``onnxscript`` packages, the
``export`` extra).
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from kd_engine.errors import KDWError

FORMATS = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}


def _run_dir(run: str | Path, runs_dir: str | Path) -> Path:
    from kd_engine.store import Run, resolve_run

    if isinstance(run, Run):
        return run.run_dir
    return resolve_run(run, runs_dir)


def load_student(run, runs_dir: str | Path = "runs") -> nn.Module:
    """The run's trained student as a plain ``nn.Module`` (eval mode, CPU).

    ``run`` is a ``kd_engine.store.Run``, a run directory, a run id or a unique part of one.
    """
    from kd_engine.inspection import RunInspector

    return RunInspector(_run_dir(run, runs_dir)).model("student")


def export_student(run, fmt: str = "safetensors", output: str | Path | None = None,
                   runs_dir: str | Path = "runs") -> Path:
    """Write the run's student in ``fmt`` (safetensors, torchscript, onnx); return the file."""
    if fmt not in FORMATS:
        raise KDWError(f"--format {fmt!r}: unknown export format (allowed: {', '.join(FORMATS)})")
    run_dir = _run_dir(run, runs_dir)
    from kd_engine.store import Run

    meta = Run(run_dir).meta()
    model = load_student(run_dir)
    path = Path(output) if output else run_dir / "export" / f"student{FORMATS[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, *[int(s) for s in meta["input_shape"]])
    if fmt == "safetensors":
        from kd_engine.trainers.checkpoint import save_weights

        student = Run(run_dir).config()["student"]
        save_weights(model, path, {"model": student["name"], "params": student.get("params") or {},
                                   "input_shape": meta["input_shape"], "class_names": meta["class_names"]})
    elif fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still the format asked for
            traced = torch.jit.trace(model, example, check_trace=False)
        traced.save(str(path))
    else:
        with contextlib.redirect_stdout(sys.stderr):  # the exporter's progress lines are not the result
            _export_onnx(model, example, path)
    return path


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise KDWError("--format onnx needs the onnx and onnxscript packages: "
                       "pip install 'kd-workbench[export]'") from None
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"],
                                    output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(path))

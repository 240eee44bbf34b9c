"""What a new run records about itself in the store's meta when it starts (`Trainer`)."""
from __future__ import annotations

from kd_engine.models import count_parameters
from kd_engine.weights import teacher_origin


def describe(spec) -> str:
    params = ", ".join(f"{k}={v}" for k, v in sorted(spec.params.items()))
    return f"{spec.name}({params})"


def run_meta(cfg, data, device, world_size: int, teacher_source: str | None, student, teacher) -> dict:
    """The run's identity (method, data, models, seed), where it runs, and which student weights
    are evaluated, checkpointed and exported: the student's own ("raw") or its EMA ("ema")."""
    return {"method": cfg.method, "dataset": cfg.data.name, "student": describe(cfg.student),
            "teacher": describe(cfg.teacher) if cfg.teacher else None,
            "weighting": cfg.weighting.strategy, "seed": cfg.seed, "epochs": cfg.epochs,
            "device": str(device), "world_size": world_size,
            "teacher_source": teacher_source, "teacher_origin": teacher_origin(cfg.teacher),
            "student_params": count_parameters(student),
            "teacher_params": count_parameters(teacher) if teacher else None,
            "class_names": data.class_names, "input_shape": list(data.input_shape),
            "evaluated_weights": "ema" if cfg.ema else "raw"}

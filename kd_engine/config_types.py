"""The building blocks of the config schema (`kd_engine.config`): the strict base model and
numbers that must be numbers. Kept apart so the schema's sections can live in several modules."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import AllowInfNan, BaseModel, BeforeValidator, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _not_bool(value: Any) -> Any:
    """pydantic reads true/false as 1/0 for a number; a learning rate of `true` is a mistake."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


# A number that must be a number: not true/false, and finite. Strings such as "5e-4" still convert:
# YAML 1.1 reads a float without a dot as a string.
Real = Annotated[float, BeforeValidator(_not_bool), AllowInfNan(False)]
Count = Annotated[int, BeforeValidator(_not_bool)]

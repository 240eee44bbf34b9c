"""Figures of recorded runs: curves, instances, features, attention, comparison."""

__all__: list[str] = []

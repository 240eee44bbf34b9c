"""Figures of experiment results: arms over seeds, paired differences."""

__all__: list[str] = []

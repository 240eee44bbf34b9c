"""Trainers: the loop every run goes through, its runtime (device, DDP) and checkpoints."""
from kd_engine.trainers.loop import train

__all__ = ["train"]

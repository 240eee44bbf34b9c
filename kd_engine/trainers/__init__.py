"""The trainer every run goes through (`trainer.Trainer`), its runtime (device, DDP), optimizers,
checkpoints and evaluation helpers. Turning a config into a run is `kd_engine.run.train`."""

"""The Ray layer: the only code that imports Ray (Tune for sweeps, Train for DDP trials)."""

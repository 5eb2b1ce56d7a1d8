"""sweeplab: hyperparameter sweeps of image-classification training."""

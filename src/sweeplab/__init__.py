"""sweeplab: hyperparameter sweeps of image-classification training."""

from sweeplab.core import env as _env

_env.no_telemetry()  # here, so it holds whichever sweeplab module is imported first

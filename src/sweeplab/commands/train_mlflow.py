"""`sweeplab train`'s MLflow run (`tracking/train_run.py`), kept out of the training's way.

The run folder is the record a training cannot lose; MLflow is a copy of it. So a store that fails
(locked, full, gone) costs one warning and the rest of the run's logging, never the training. At the
end the final weights are saved as an MLflow PyTorch model (`models.classifier`: normalisation and
the config's tricks inside, float images in [0, 1] in) and logged as the run's model.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from sweeplab.core.errors import first_line
from sweeplab.schema import Config

EXAMPLE_IMAGES = 4  # the model's input example: a few test images (two or more: the batch size stays free)


class Logger:
    """The MLflow side of one `sweeplab train`; every call is a no-op once logging has failed."""

    def __init__(self, uri: str, out: Path, conf: Config, source: str, experiment: str) -> None:
        self.run: Any = None
        try:
            from sweeplab.tracking.train_run import TrainRun

            self.run = TrainRun(uri, out, conf.to_dict(), source, experiment)
        except Exception as e:  # the store is unusable: train anyway
            self._failed("could not open an MLflow run", e)

    def _failed(self, what: str, e: BaseException) -> None:
        first = first_line(e) or type(e).__name__
        print(f"sweeplab: warning: {what} ({first}); the run folder keeps everything", file=sys.stderr)
        self.run = None

    def epoch(self, metrics: dict[str, float]) -> None:
        if self.run is not None:
            try:
                self.run.epoch(metrics)
            except Exception as e:
                self._failed("MLflow logging stopped", e)

    def finish(self, state: dict[str, Any], data: Any) -> None:
        """The final weights as the run's model, then the run FINISHED; one line saying where it is."""
        if self.run is None:
            return
        from sweeplab.models import classifier
        from sweeplab.tracking import models

        try:
            module = classifier.from_state(state, data.shape, data.num_classes, data.mean, data.std)
            example = (data.test_x[:EXAMPLE_IMAGES].float() / 255).numpy()
            with tempfile.TemporaryDirectory(prefix="sweeplab-model-") as tmp:
                self.run.model(models.save_model(module, example, Path(tmp) / "model"), step=int(state["epoch"]))
            self.run.end("FINISHED")
        except Exception as e:
            self._failed("could not log the model", e)
            return
        print(f"sweeplab: {self.run.url_hint}", file=sys.stderr)

    def stop(self, status: str) -> None:
        """KILLED (paused or interrupted: --resume continues the same run) or FAILED."""
        if self.run is not None:
            try:
                self.run.end(status)
            except Exception as e:
                self._failed("could not end the MLflow run", e)

"""`sweeplab train`'s progress: a bar per epoch on a terminal, plain lines anywhere else.

On a terminal each epoch gets a tqdm bar over its batches with images/s and the time left, and keeps
its last state with the epoch's metrics once it ends (one line per epoch stays on screen). Into a pipe
or a log file a bar's carriage returns would be noise: there a line is printed every `every_s` seconds
during an epoch and one when it ends. The engine only calls `step` and `epoch`; it knows nothing of this.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

SHOWN = ("train/loss", "train/error", "val/loss", "val/error", "time/images_per_s")


def _duration(seconds: float) -> str:
    """1h02m03s, 2m05s, 42s."""
    s = int(round(seconds))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def summary(metrics: dict[str, float]) -> str:
    """An epoch's metrics as one short line: 'train/loss 0.412  val/error 12.31%  3,120 img/s  74s'."""
    parts = []
    for key in SHOWN:
        if key in metrics:
            value = metrics[key]
            if key == "time/images_per_s":
                parts.append(f"{value:,.0f} img/s")
            else:
                parts.append(f"{key} {value:.2f}%" if key.endswith("error") else f"{key} {value:.4g}")
    if "time/epoch_s" in metrics:
        parts.append(_duration(metrics["time/epoch_s"]))
    return "  ".join(parts)


def _columns(stream: IO[str]) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


class Progress:
    """Progress of one `sweeplab train` run, from epoch `start` (the checkpoint's) to `epochs`."""

    def __init__(
        self, epochs: int, start: int = 0, stream: IO[str] | None = None, bar: bool | None = None, every_s: float = 30
    ) -> None:
        self.epochs, self.epoch = epochs, start  # the epoch in progress is self.epoch + 1
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.every_s = every_s
        self._tqdm: Any = None
        self._started = self._said = time.monotonic()
        self._first = 0  # images trained on by the end of the epoch's first step

    def step(self, step: int, steps: int, images: int) -> None:
        """After optimiser step `step` of `steps` of the current epoch, `images` trained on so far."""
        now = time.monotonic()
        if step == 1:  # timed from the end of the first step: it pays for warm-up (and compilation)
            self._started, self._first, self._said = now, images, now
        took = now - self._started
        rate = f"{(images - self._first) / took:,.0f} img/s" if step > 1 and took > 0 else ""
        where = f"epoch {self.epoch + 1}/{self.epochs}"
        if self.bar:
            if self._tqdm is None:
                from tqdm import tqdm

                # follow the terminal's width; a pty that says it is 0 x 0 gets 100 x 24
                size: dict[str, Any] = {"dynamic_ncols": True} if _columns(self.stream) else {"ncols": 100, "nrows": 24}
                self._tqdm = tqdm(total=steps, desc=where, unit="batch", file=self.stream, **size)
            self._tqdm.set_postfix_str(rate, refresh=False)
            self._tqdm.update(step - self._tqdm.n)
        elif rate and now - self._said >= self.every_s and step < steps:
            self._said = now
            left = (steps - step) * took / (step - 1)
            print(
                f"{where}: batch {step}/{steps} ({100 * step / steps:.0f}%), {rate}, {_duration(left)} left in epoch",
                file=self.stream,
                flush=True,
            )

    def epoch_end(self, metrics: dict[str, float]) -> None:
        """The epoch's metrics: on its bar's last state, or as a line of their own."""
        self.epoch = int(metrics.get("epoch", self.epoch + 1))
        line = summary(metrics)
        if self._tqdm is not None:  # the finished bar becomes the epoch's line: no bar, room for the metrics
            safe = line.replace("{", "{{").replace("}", "}}")
            self._tqdm.bar_format = "{desc}: {n_fmt}/{total_fmt} batches in {elapsed}  " + safe
            self._tqdm.close()
            self._tqdm = None
        else:
            print(f"epoch {self.epoch}/{self.epochs}: {line}", file=self.stream, flush=True)

    def close(self) -> None:
        """Close a bar left open (an epoch interrupted by an error or Ctrl-C)."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

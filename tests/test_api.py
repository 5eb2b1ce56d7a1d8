"""The Python API's bad input, raised before anything is written (docs/api.md).

The API as a notebook uses it (a sweep on a real local Ray, its trials as a DataFrame, the best run, its
model loaded with sweeplab.load_model and with mlflow.pytorch.load_model giving the same predictions, the
trials read back) is the README's Python block, run in a fresh process by tests/test_readme.py, whose probe
checks each of those.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sweep_cli import BASE


def test_bad_input_to_the_api_is_raised_before_anything_is_written(tmp_path: Path, monkeypatch) -> None:
    import sweeplab
    from sweeplab.core.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    sweep = {"name": "nb", "config": BASE, "space": {"optim.lr": {"grid": [0.1]}}}
    cases = [
        (dict(storage="s3://bucket/x"), "keeps each launch's ledger and checkpoints in a folder"),
        (dict(tracking_uri="http://[::1"), "tracking_uri"),
        (dict(progress="quiet"), "progress must be"),
        (dict(name="../x"), "--name"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            sweeplab.run(sweep, **kwargs)
    with pytest.raises(ConfigError, match="unknown key 'spaces'"):
        sweeplab.run({**sweep, "spaces": {}})
    with pytest.raises(ConfigError, match="no launch 'nope'"):
        sweeplab.resume("nope", storage=str(tmp_path / "ray"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no store made

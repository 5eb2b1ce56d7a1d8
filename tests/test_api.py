"""The Python API as a notebook uses it (docs/api.md): a smoke sweep on a real local Ray, its trials as a
DataFrame, the best run, its model loaded with sweeplab.load_model and with mlflow.pytorch.load_model
giving the same predictions; and the API's bad input raised before anything is written.

The notebook runs in a subprocess of its own, as a user's kernel would: nothing of this test process
(MLflow's process-wide URI, a started Ray) leaks into it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sweep_cli import BASE, TINY

NOTEBOOK = """
import json, sys
import mlflow, mlflow.pytorch, torch
import sweeplab

sweep = {{
    "name": "nb",
    "config": {base!r},
    "overrides": {{**{tiny!r}, "train.epochs": 2}},
    "space": {{"optim.lr": {{"grid": [0.05, 0.2]}}}},
    "max_concurrent": 2,
}}
trials = sweeplab.run(sweep, name="nb", storage="ray", tracking_uri="sqlite:///mlflow.db", num_cpus=2,
                      progress="none")
best = sweeplab.best("nb", tracking_uri="sqlite:///mlflow.db")
model = sweeplab.load_model(best[0]["run_id"], tracking_uri="sqlite:///mlflow.db")
mlflow.set_tracking_uri("sqlite:///mlflow.db")
same = mlflow.pytorch.load_model(f"runs:/{{best[0]['run_id']}}/model")
batch = torch.rand(5, 1, 8, 8)
with torch.no_grad():
    a, b = model(batch), same(batch)
again = sweeplab.trials("nb", storage="ray")
print(json.dumps({{
    "columns": list(trials.columns), "rows": trials.to_dict("records"), "attrs": trials.attrs,
    "best": [{{k: v for k, v in b.items() if k != "config"}} for b in best], "config": best[0]["config"],
    "training": model.training, "same": bool(torch.equal(a, b)), "shape": list(a.shape),
    "again": again[["key", "status", "run_id"]].to_dict("records"),
}}, default=str))
"""


@pytest.mark.slow
def test_a_notebook_runs_a_sweep_and_loads_the_best_model_two_ways(tmp_path: Path) -> None:
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent(NOTEBOOK.format(base=BASE, tiny=TINY)))
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"key", "label", "status", "epochs", "optim.lr", "val/error", "run_id"} <= set(out["columns"])
    assert sorted(row["label"] for row in out["rows"]) == ["lr=0.05", "lr=0.2"]
    assert all(row["status"] == "FINISHED" and row["epochs"] == 2 and row["run_id"] for row in out["rows"])
    assert out["attrs"]["status"] == "FINISHED" and out["attrs"]["exit_code"] == 0
    best_row = min(out["rows"], key=lambda row: row["val/error"])
    assert out["best"][0]["run_id"] == best_row["run_id"] and out["best"][0]["value"] == best_row["val/error"]
    assert out["config"]["optim"]["lr"] == best_row["optim.lr"] and out["config"]["train"]["epochs"] == 2
    assert out["training"] is False and out["same"] is True and out["shape"] == [5, 10]
    assert out["again"] == [{"key": row["key"], "status": "FINISHED", "run_id": row["run_id"]} for row in out["rows"]]
    assert "best: trial" in r.stdout and "rerun it: sweeplab train --from-run " + best_row["run_id"] in r.stdout


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

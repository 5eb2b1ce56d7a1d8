"""Analysis rebuilt from a real SQLite MLflow store: best, tables, figures, Parquet export, the CLI."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
import yaml

import sweeplab.tracking  # noqa: F401 - first: it turns MLflow telemetry off before mlflow loads
from mlflow_store import fresh_uri, grid_point, run_trial, trial_config
from sweeplab import reference
from sweeplab.analysis import runs, tables
from sweeplab.cli import main
from sweeplab.tracking import Tracker
from sweeplab.tracking.store import client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")  # MLflow's own SQLAlchemy use

# row 0: three seeds; row 1: one seed (two launches, the later run of seed 0 wins);
# row 2: stopped early by ASHA; row 3: failed; the other rows: not run
SEED_ERRORS = {0: 11.0, 1: 10.0, 2: 13.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = fresh_uri(tmp_path_factory.mktemp("store"), tmp_path_factory)
    t = Tracker(uri, "quickstart", "qs-a", {"sweeplab.command": "sweeplab run sweeps/quickstart.yaml"})
    for seed, err in SEED_ERRORS.items():
        run_trial(t, f"r0_s{seed}", *grid_point(0), seed=seed, errors=[40.0, 20.0, err], epoch_s=20.0)
    run_trial(t, "r1_old", *grid_point(1), seed=0, errors=[40.0, 30.0, 25.0])
    run_trial(t, "r2_stop", *grid_point(2), seed=0, errors=[70.0], stopped=True)
    run_trial(t, "r3_fail", *grid_point(3), seed=0, errors=[80.0, 90.0], failed=True)
    t.close()
    t = Tracker(uri, "quickstart", "qs-b", {})
    run_trial(t, "r1_new", *grid_point(1), seed=0, errors=[30.0, 15.0, 12.5], epoch_s=700.0)
    run_trial(t, "off_grid", 0.3, 1e-4, seed=0, errors=[30.0, 20.0, 14.0], rows={"quickstart": 999})
    t.close()
    # a published table: the trial's row comes from its `sweeplab.row.<id>` tag
    t = Tracker(uri, "bs_lr", "bs-a", {})
    run_trial(t, "bs128_lr0.4", 0.4, 5e-4, seed=0, errors=[20.0, 9.0, 7.5], rows={"bs_lr_initial_lr_bs128": 2})
    t.close()
    mlflow.set_tracking_uri(uri)
    return uri


def test_best_agrees_with_mlflow_ordering(store: str, capsys: pytest.CaptureFixture) -> None:
    df = mlflow.search_runs(experiment_names=["quickstart"], order_by=["metrics.`val/error` ASC"])
    ours = runs.best(client(store), "quickstart", "val/error", top=4)
    assert [t.run_id for t in ours] == list(df["run_id"][:4])
    assert ours[0].trial_id == "r0_s1"
    assert main(["best", "quickstart", "--tracking-uri", store, "--json", "--top", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in out] == list(df["run_id"][:2]) and out[0]["value"] == 10.0
    # a launch name selects only that launch's trials
    assert [t.trial_id for t in runs.best(client(store), "qs-b", top=5)] == ["r1_new", "off_grid"]


def test_best_yaml_is_the_trial_config(store: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["best", "quickstart", "--tracking-uri", store, "--yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == trial_config(*grid_point(0), seed=1)


def _csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_table_reference_columns_and_row_states(store: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["table", "quickstart", "--tracking-uri", store, "--format", "csv"]) == 0
    head, *rows = _csv(capsys.readouterr().out)
    ref = reference.get("quickstart")
    # the table's error, epochs and time columns have no value in any row: only its keys are printed, and
    # without a published value nothing is judged (no verdict columns)
    assert [c for c in head if c in ref.columns] == ["initial lr", "weight decay"]
    assert head == ["initial lr", "weight decay", "ours", "ours spread", "seeds"] + [
        "ours epochs",
        "ours time",
        "ours hardware",
    ]
    assert len(rows) == len(ref.rows) + 1
    cell = {name: [r[head.index(name)] for r in rows] for name in head}
    assert cell["initial lr"][:-1] == [r[0] for r in ref.rows]
    # median and spread over the three seeds of row 0
    assert cell["ours"][0] == "11.00" and cell["seeds"][0] == "3"
    assert cell["ours spread"][0] == "10.00-13.00 (sd 1.53)"
    assert cell["ours time"][0] == "1m00s" and cell["ours epochs"][0] == "3"
    assert cell["ours hardware"][0] == "cpu x2"
    # the later launch's run of the same seed replaces the earlier one; 3 x 700 s = 35 min
    assert (cell["ours"][1], cell["seeds"][1], cell["ours time"][1]) == ("12.50", "1", "35m")
    assert cell["ours"][2] == "stopped early (epoch 1)" and cell["ours"][3] == "failed"
    assert all(v == "not run" for v in cell["ours"][4:-1])
    # a point outside the sweep's grid gets a row of its own, at the end
    assert rows[-1][:2] == ["0.3", "0.0001"] and cell["ours"][-1] == "14.00"


def test_published_table_rows_from_row_tags(store: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["table", "bs_lr_initial_lr_bs128", "--tracking-uri", store]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    ref = reference.get("bs_lr_initial_lr_bs128")
    assert len(lines) == len(ref.rows) + 1
    assert lines[0].startswith("| Model | batch size | initial lr | lr schedule | # of Epochs | ours epochs |")
    # one seed, no other row with seeds: r from the store's other config of the same dataset and model with
    # seeds, quickstart row 0 (10, 11, 13: r = 2.832), so 7.50 vs 7.28 is well within t(96%, 6) x 1.048 = 2.74
    row = "| ResNet-preact-20 | 128 | 0.4 | cosine | 200 | 3 | 7.28 | 7.50 | - | 1 | consistent | ±2.74 | 24m |"
    assert lines[3].startswith(row)
    assert sum("not run" in line for line in lines) == len(ref.rows) - 1


def test_every_reference_table_renders(store: str) -> None:
    for table in reference.tables().values():
        built = tables.build(None, table, [])
        filled = [c for j, c in enumerate(table.columns) if any(str(r[j]).strip() for r in table.rows)]
        assert [c for c in built.columns if c in table.columns] == filled  # a column with no value is left out
        assert ("verdict" in built.columns) == (table.id != "quickstart")
        assert len(set(built.columns)) == len(built.columns) and "ours" in " ".join(built.columns)
        md, html = tables.render(built, "md"), tables.render(built, "html")
        assert md.count("\n| ") == len(table.rows) + 1 and html.count("<tr>") == len(table.rows) + 1
        assert any("not run" in r for r in built.rows)


def test_table_list_names_every_reference_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["table", "--list", "--format", "csv"]) == 0
    head, *rows = _csv(capsys.readouterr().out)
    ids = [r[0] for r in rows]
    assert head[:4] == ["id", "dataset", "rows", "sweeps"]
    assert len(ids) == 50 and ids[-1] == "quickstart" and len(set(ids)) == 50
    assert {"cifar10_paper_settings", "bs_lr_initial_lr_bs128", "flax_wrn26_10", "dawnbench_resnet9"} <= set(ids)


def test_unknown_inputs_exit_2(store: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["table", "no_such_table"]) == 2
    assert "unknown table id 'no_such_table'" in capsys.readouterr().err
    assert main(["best", "no_such_sweep", "--tracking-uri", store]) == 2
    assert "no sweep or launch named 'no_such_sweep'" in capsys.readouterr().err
    assert main(["best", "quickstart", "--metric", "val/acc", "--tracking-uri", store]) == 2
    assert main(["table"]) == 2 and main(["export", "nope", "--out", "x.csv", "--tracking-uri", store]) == 2


def _png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_writes_tables_figures_and_index(store: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["report", "--out", str(out), "--tracking-uri", store]) == 0
    for kind in ("error", "parallel", "curves", "stops"):
        assert _png(out / f"quickstart_{kind}.png"), kind
    for name in ("quickstart.md", "quickstart.csv", "quickstart.html"):
        assert (out / name).is_file()
    index_md, index_html = (out / "index.md").read_text(), (out / "index.html").read_text()
    assert "## quickstart:" in index_md and "![quickstart_error](quickstart_error.png)" in index_md
    assert "<img src='quickstart_curves.png'" in index_html and "<table>" in index_html
    assert "## bs_lr_initial_lr_bs128:" in index_md and _png(out / "bs_lr_initial_lr_bs128_curves.png")
    assert "cifar10_paper_settings" not in index_md  # only tables with runs behind them


def test_report_has_no_duplicate_figures(store: str, tmp_path: Path) -> None:
    """The quickstart sweep is exactly the quickstart table's trials: its figures are the table's, not copies."""
    out = tmp_path / "report"
    assert main(["report", "--out", str(out), "--tracking-uri", store]) == 0
    by_content: dict[str, list[str]] = {}
    for path in sorted(out.iterdir()):
        by_content.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path.name)
    assert [names for names in by_content.values() if len(names) > 1] == []
    assert not list(out.glob("sweep_quickstart_*.png"))
    sweep_part = (out / "index.html").read_text().split("<h2>Sweeps")[1]
    assert "<img src='quickstart_curves.png'" in sweep_part  # the sweep shows the table's figure


def test_report_rows_link_to_their_runs(store: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    ui = "http://mlflow.example:8080"
    assert main(["report", "--out", str(out), "--tracking-uri", store, "--ui-url", ui]) == 0
    page = (out / "index.html").read_text()
    table = page.split('<h3 id="quickstart">')[1].split("</table>")[0]
    rows = table.split("<tr>")[2:]
    c = client(store)
    quick = {t.trial_id: t for t in runs.trials(c, "quickstart")}
    exp = quick["r0_s0"].experiment_id
    # row 0 (three seeds): the compare-runs page of exactly its runs; row 2 (one run): that run's page
    ids = "%2C".join(f"%22{quick[f'r0_s{s}'].run_id}%22" for s in range(3))
    assert f"href='{ui}/#/compare-runs?runs=%5B{ids}%5D&amp;experiments=%5B%22{exp}%22%5D'" in rows[0]
    assert ">3 runs</a>" in rows[0]
    assert f"href='{ui}/#/experiments/{exp}/runs/{quick['r2_stop'].run_id}'>1 run</a>" in rows[2]
    assert "<a " not in rows[5]  # a row not run links nowhere
    # every sweep-summary row is one run, and the table's own HTML file links too
    sweep = page.split("<h2>Sweeps")[1]
    assert sweep.count(f"{ui}/#/experiments/{exp}/runs/") == 5
    assert f"{ui}/#/compare-runs?runs=" in (out / "quickstart.html").read_text()


def test_out_never_replaces_files_without_a_word(store: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert main(["report", "--out", str(out), "--tracking-uri", store]) == 0
    assert "replacing" not in capsys.readouterr().out
    assert main(["report", "--out", str(out), "--tracking-uri", store]) == 0  # an earlier report: updated, and said
    assert "replacing the earlier report" in capsys.readouterr().out
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me\n")
    assert main(["report", "--out", str(mine), "--tracking-uri", store]) == 2
    assert "--force" in capsys.readouterr().err and not (mine / "index.md").exists()
    assert main(["report", "--out", str(mine), "--tracking-uri", store, "--force"]) == 0
    assert (mine / "index.md").is_file() and (mine / "notes.txt").read_text() == "keep me\n"
    for argv, made in [
        (["export", "quickstart", "--out", str(tmp_path / "q.parquet")], tmp_path / "q.parquet"),
        (["table", "quickstart", "--out", str(tmp_path / "t")], tmp_path / "t" / "quickstart.md"),
    ]:
        assert main([*argv, "--tracking-uri", store]) == 0
        before = made.stat().st_mtime_ns
        capsys.readouterr()
        assert main([*argv, "--tracking-uri", store]) == 2
        err = capsys.readouterr()
        assert "--force" in err.err and err.out == "" and made.stat().st_mtime_ns == before
        assert main([*argv, "--tracking-uri", store, "--force"]) == 0 and made.stat().st_mtime_ns != before


def test_export_parquet_reads_back(store: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "quickstart.parquet"
    assert main(["export", "quickstart", "--out", str(path), "--tracking-uri", store]) == 0
    table = pq.read_table(path)
    assert table.num_rows == 8  # every trial of both launches; the parent runs are not trials
    rows = {r["trial_id"]: r for r in table.to_pylist()}
    r = rows["r0_s2"]
    assert r["params.optim.lr"] == grid_point(0)[0] and r["params.data.batch_size"] == 128
    assert r["params.optim.nesterov"] is True and r["params.train.precision"] == "fp32"
    assert r["metrics.val/error"] == 13.0 and r["launch"] == "qs-a" and r["tags.sweeplab.seed"] == "2"
    assert r["history.step"] == [1, 2, 3] and r["history.val/error"] == [40.0, 20.0, 13.0]
    assert rows["r2_stop"]["stopped_early"] is True and rows["r3_fail"]["status"] == "FAILED"
    assert rows["r2_stop"]["outcome"] == "stopped early at epoch 1" and rows["r3_fail"]["outcome"] == "failed"
    assert r["label"] == "r0_s2"  # logged without a label: the trial id
    assert "history.pid" not in table.column_names

"""Tables you can trust: smoke runs kept apart from full runs, a verdict per row, and the trials that
face two different published values, checked on a real SQLite MLflow store and by hand-computed values."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import sweeplab.tracking  # noqa: F401 - first: it turns MLflow telemetry off before mlflow loads
from mlflow_store import fresh_uri, run_trial
from sweeplab import reference
from sweeplab.analysis import tables
from sweeplab.cli import main
from sweeplab.tracking import Tracker

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")


# --- the verdict rule, by hand -------------------------------------------------------------------


def test_verdict_uses_the_rows_own_seed_spread() -> None:
    # median 5.2, sd 0.2: within noise up to 2 x 0.2 = 0.4 from the published value
    seeds = [5.0, 5.2, 5.4]
    assert tables.verdict(seeds, 5.1) == "within noise"
    assert tables.verdict(seeds, 5.6) == "within noise"  # 0.4 away: on the edge, still within
    assert tables.verdict(seeds, 6.0) == "better"  # ours 0.8 lower
    assert tables.verdict(seeds, 4.5) == "worse"  # ours 0.7 higher
    assert tables.verdict(seeds, 6.0, pooled=5.0) == "better"  # a row with >= 2 seeds ignores the pooled sd


def test_verdict_of_a_one_seed_row_uses_the_pooled_then_the_default_sd() -> None:
    assert tables.verdict([7.5], 7.0, pooled=0.3) == "within noise"  # 0.5 <= 2 x 0.3
    assert tables.verdict([7.5], 7.0, pooled=0.1) == "worse"  # 0.5 > 2 x 0.1
    assert tables.DEFAULT_SD == 0.2
    assert tables.verdict([7.5], 7.2) == "within noise"  # no pooled sd: 0.3 <= 2 x 0.2
    assert tables.verdict([7.5], 8.0) == "better"  # 0.5 > 0.4
    assert tables.verdict([], 7.0) == "-" and tables.verdict([7.5], None) == "-"


def test_pooled_sd_weights_each_rows_variance_by_its_degrees_of_freedom() -> None:
    # variances 0.04 (3 seeds, 2 dof) and 0.08 (2 seeds, 1 dof): sqrt((2 x 0.04 + 1 x 0.08) / 3)
    assert tables.pooled_sd([[5.0, 5.2, 5.4], [1.0, 1.4], [9.0]]) == pytest.approx(math.sqrt(0.16 / 3))
    assert tables.pooled_sd([[9.0], [], [3.0]]) is None


def test_published_cells_read_as_errors() -> None:
    assert tables.published_error("10.57 (1 run)", "error") == 10.57
    assert tables.published_error("0.82 (best 0.67)", "error") == 0.82
    assert tables.published_error("4.45%", "error") == 4.45
    assert tables.published_error("94.1%", "accuracy") == pytest.approx(5.9)
    assert tables.published_error("about 93%", "accuracy") == pytest.approx(7.0)
    assert tables.published_error("", "error") is None and tables.published_error("n/a", "error") is None


def test_summary_line() -> None:
    verdicts = ["within noise", "within noise", "better", "worse", "-", "-", "-", "-"]
    assert tables.summary(verdicts, measured=5, total=8) == (
        "2 of 4 rows within noise, 1 better, 1 worse (1 measured without a published value; 3 without a finished run)"
    )
    assert tables.summary(["within noise"] * 14 + ["better"] * 3 + ["worse"] * 3, 20, 20) == (
        "14 of 20 rows within noise, 3 better, 3 worse"
    )
    assert tables.summary(["-"] * 3, measured=0, total=3) == "no row has a finished run yet"
    assert (
        tables.summary(["-"] * 3, measured=2, total=3) == "no measured row has a published value (2 of 3 rows measured)"
    )


# --- smoke runs and full runs never mix ----------------------------------------------------------


def _point(table: reference.Table, i: int) -> tuple[float, float]:
    lr, wd = table.rows[i][:2]
    return float(lr), float(wd)


def _full_launch(uri: str) -> None:
    full = reference.get("quickstart")
    t = Tracker(uri, "quickstart", "qs-full", {"sweeplab.smoke": "false"})
    for i in range(len(full.rows)):
        run_trial(t, f"full_{i}", *_point(full, i), seed=0, errors=[30.0, 20.0, 10.0 + i / 10])
    t.close()


def _smoke_launch(uri: str) -> None:
    smoke = reference.get("quickstart", smoke=True)
    t = Tracker(uri, "quickstart", "qs-smoke", {"sweeplab.smoke": "true"})
    for i in range(len(smoke.rows)):  # later runs of the same seeds, some at points of the full grid too
        run_trial(t, f"smoke_{i}", *_point(smoke, i), seed=0, errors=[60.0, 50.0, 40.0 + i], smoke=True)
    t.close()


def _outputs(uri: str, capsys: pytest.CaptureFixture, *extra: str) -> dict[str, str]:
    out = {}
    for fmt in ("md", "csv", "html"):
        assert main(["table", "quickstart", "--tracking-uri", uri, "--format", fmt, *extra]) == 0
        out[fmt] = capsys.readouterr().out
    return out


def test_the_quickstart_grids() -> None:
    full, smoke = reference.get("quickstart"), reference.get("quickstart", smoke=True)
    assert len(full.rows) == 16 and len(smoke.rows) == 8  # never the union (21 rows)
    assert {r[0] for r in smoke.rows} == {"0.02", "0.05", "0.1", "0.4"} and {r[1] for r in smoke.rows} == {
        "0.0005",
        "0.005",
    }
    assert "smoke grid" in smoke.notes and "smoke" not in full.notes


def test_a_later_smoke_run_leaves_the_table_unchanged(tmp_path: Path, tmp_path_factory, capsys) -> None:
    uri = fresh_uri(tmp_path / "store", tmp_path_factory)
    _full_launch(uri)
    before = _outputs(uri, capsys)
    _smoke_launch(uri)
    assert _outputs(uri, capsys) == before  # byte for byte, in every format
    head, *rows = list(csv.reader(io.StringIO(before["csv"])))
    assert len(rows) == 16 and "(smoke run)" not in before["md"]
    assert [r[head.index("ours")] for r in rows] == [f"{10 + i / 10:.2f}" for i in range(16)]

    smoke = _outputs(uri, capsys, "--smoke")
    head, *rows = list(csv.reader(io.StringIO(smoke["csv"])))
    assert len(rows) == 8 and [r[head.index("ours")] for r in rows] == [f"{40 + i:.2f}" for i in range(8)]
    assert smoke["md"].startswith(
        "## quickstart: Quickstart: ResNet-preact-20 on Fashion-MNIST, lr x weight decay (smoke run)\n"
    )
    assert "(smoke run)</h2>" in smoke["html"]
    assert smoke["md"].count("\n| ") == 9


def test_only_smoke_runs_say_no_full_run_yet(tmp_path: Path, tmp_path_factory, capsys) -> None:
    """Every analysis command that finds no full run says so the same way: exit 1, nothing on stdout,
    one line naming the command that shows the smoke runs (and writes nothing)."""
    uri = fresh_uri(tmp_path / "store", tmp_path_factory)
    _smoke_launch(uri)
    parquet, report = tmp_path / "q.parquet", tmp_path / "report"
    commands = {
        "table quickstart": "sweeplab table quickstart --smoke",
        "table --all --summary": "sweeplab table --all --smoke",
        "best quickstart": "sweeplab best quickstart --smoke",
        f"export quickstart --out {parquet}": f"sweeplab export quickstart --out {parquet} --smoke",
        f"report --out {report}": "sweeplab report --smoke",
    }
    for argv, shows in commands.items():
        assert main([*argv.split(), "--tracking-uri", uri]) == 1, argv
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1, (argv, out, err)
        assert err.startswith("sweeplab: nothing found: no full run of ") and "only smoke runs (8 trials)" in err
        assert f"`{shows}` shows them" in err, err
    assert not parquet.exists() and not report.exists()
    assert main(["table", "quickstart", "--smoke", "--tracking-uri", uri]) == 0
    out, err = capsys.readouterr()
    assert "not run" not in out and err == ""
    assert main(["best", "quickstart", "--smoke", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## quickstart: best by val/error (smoke run)\n") and "smoke_0" in out


def test_no_store_is_the_same_exit_and_hint_everywhere(tmp_path: Path, capsys, monkeypatch) -> None:
    """A store that does not exist is bad input (the URI names nothing), the same in every analysis command."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for argv in (["best", "quickstart"], ["table", "quickstart"], ["export", "q", "--out", "q.parquet"], ["report"]):
        assert main([*argv, "--tracking-uri", uri]) == 2, argv
        err = capsys.readouterr().err
        store = tmp_path / "mlflow.db"
        assert err == f"sweeplab: error: no MLflow store at {store} (run a sweep first, or pass --tracking-uri)\n", err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, the store not made


def test_best_export_and_report_keep_smoke_apart(tmp_path: Path, tmp_path_factory, capsys) -> None:
    uri = fresh_uri(tmp_path / "store", tmp_path_factory)
    _full_launch(uri)
    _smoke_launch(uri)
    assert main(["best", "quickstart", "--top", "20", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "full_0" in out and "smoke_" not in out and "(smoke run)" not in out
    for smoke, n, prefix in ((False, 16, "full_"), (True, 8, "smoke_")):
        path = tmp_path / f"q{smoke}.parquet"
        assert main(["export", "quickstart", "--out", str(path), "--tracking-uri", uri] + ["--smoke"] * smoke) == 0
        ids = pq.read_table(path).column("trial_id").to_pylist()
        assert len(ids) == n and all(i.startswith(prefix) for i in ids)
        assert ("(smoke run)" in capsys.readouterr().out) == smoke
    assert main(["report", "--out", str(tmp_path / "r"), "--tracking-uri", uri]) == 0
    index = (tmp_path / "r" / "index.md").read_text()
    assert "smoke_" not in index and "(smoke run)" not in index and index.count("\n| 0.05 | ") == 4
    assert main(["report", "--smoke", "--out", str(tmp_path / "s"), "--tracking-uri", uri]) == 0
    index = (tmp_path / "s" / "index.md").read_text()
    assert index.startswith("# sweeplab report (smoke run)\n")
    assert "### quickstart: Quickstart: ResNet-preact-20 on Fashion-MNIST, lr x weight decay (smoke run)" in index
    assert "### quickstart: best trials (smoke run)" in index and "full_" not in index
    assert index.count("\n| 0.05 | ") == 2


# --- verdicts and two published values through the CLI -------------------------------------------

BS128 = "bs_lr_initial_lr_bs128"  # rows 0-2 published 9.03, 7.54, 7.28; seven rows


@pytest.fixture(scope="module")
def published_store(tmp_path_factory) -> str:
    uri = fresh_uri(tmp_path_factory.mktemp("published"), tmp_path_factory)
    t = Tracker(uri, "bs_lr", "bs-a", {})
    for seed, err in enumerate([7.0, 7.2, 7.4]):  # median 7.2, sd 0.2 vs 7.28: within noise
        run_trial(t, f"r2_s{seed}", 0.4, 5e-4, seed=seed, errors=[20.0, err], rows={BS128: 2})
    run_trial(t, "r1", 0.8, 5e-4, seed=0, errors=[20.0, 8.5], rows={BS128: 1})  # +0.96 > 2 x 0.2: worse
    run_trial(t, "r0", 1.6, 5e-4, seed=0, errors=[20.0, 8.0], rows={BS128: 0})  # -1.03: better
    # one trial, two tables: bs 2048 lr 1.6 is 8.87 in the linear-scaling table, 8.73 in the other two
    two = {"bs_lr_linear_scaling_cosine_200": 1, "bs_lr_initial_lr_bs2048": 3, "bs_lr_good_lr_longer_200ep": 1}
    run_trial(t, "bs2048", 1.6, 5e-4, seed=0, errors=[20.0, 8.8], rows=two)
    # equal published values (8.08 and 8.08): nothing to say
    same = {"bs_lr_initial_lr_bs1024": 5, "bs_lr_good_lr_longer_200ep": 3}
    run_trial(t, "bs1024", 0.8, 5e-4, seed=0, errors=[20.0, 8.1], rows=same)
    run_trial(t, "smoke", 0.4, 5e-4, seed=0, errors=[90.0, 80.0], rows={BS128: 2}, smoke=True)
    t.close()
    return uri


def test_verdict_column_and_summary(published_store: str, capsys) -> None:
    assert main(["table", BS128, "--tracking-uri", published_store, "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    head, *rows = list(csv.reader(io.StringIO(out)))
    assert head[head.index("seeds") + 1] == "verdict"
    col = {name: [r[head.index(name)] for r in rows] for name in ("ours", "seeds", "verdict")}
    assert col["ours"][:3] == ["8.00", "8.50", "7.20"] and col["seeds"][:3] == ["1", "1", "3"]
    assert col["verdict"] == ["better", "worse", "within noise", "-", "-", "-", "-"]
    line = "1 of 3 rows within noise, 1 better, 1 worse (4 without a finished run)"
    assert err == f"sweeplab: {BS128}: {line}\n"
    assert main(["table", BS128, "--tracking-uri", published_store]) == 0
    md = capsys.readouterr().out
    assert f"\nVerdicts: {line}\n" in md and "pooled over this table's rows with >= 2 seeds" in md
    assert "This table's one-seed rows: sd 0.20, pooled over its rows with >= 2 seeds" in md
    assert main(["table", BS128, "--tracking-uri", published_store, "--format", "html"]) == 0
    html = capsys.readouterr().out
    assert f"<p><small>Verdicts: {line}</small></p>" in html and "<th>verdict</th>" in html
    assert main(["table", BS128, "--summary", "--tracking-uri", published_store]) == 0
    assert capsys.readouterr().out == f"{BS128}: {line}\n"
    # --smoke: the one smoke trial only
    assert main(["table", BS128, "--smoke", "--summary", "--tracking-uri", published_store]) == 0
    assert capsys.readouterr().out == (
        f"{BS128} (smoke run): 0 of 1 rows within noise, 0 better, 1 worse (6 without a finished run)\n"
    )


def test_all_summary_prints_a_line_per_table_with_runs(published_store: str, capsys) -> None:
    assert main(["table", "--all", "--summary", "--tracking-uri", published_store]) == 0
    lines = capsys.readouterr().out.splitlines()
    ids = [line.split(":")[0] for line in lines]
    assert ids == [
        "bs_lr_linear_scaling_cosine_200",
        "bs_lr_initial_lr_bs2048",
        "bs_lr_initial_lr_bs1024",
        "bs_lr_initial_lr_bs128",
        "bs_lr_good_lr_longer_200ep",
    ]
    assert lines[3].split(None, 1)[1] == "1 of 3 rows within noise, 1 better, 1 worse (4 without a finished run)"
    # 8.8 vs 8.73 and 8.1 vs 8.08 (one seed each, no pooled sd here): both within 0.4
    assert lines[4].split(None, 1)[1] == "2 of 2 rows within noise, 0 better, 0 worse (8 without a finished run)"
    assert main(["table", "--all", "--tracking-uri", published_store]) == 0
    assert capsys.readouterr().out.count("\n## ") == 4  # five tables, one after another
    assert main(["table", "--all", "--format", "csv", "--tracking-uri", published_store]) == 2
    assert main(["table", BS128, "--all", "--tracking-uri", published_store]) == 2


def test_notes_name_trials_compared_with_two_published_values(published_store: str, capsys) -> None:
    assert main(["table", "bs_lr_initial_lr_bs2048", "--tracking-uri", published_store]) == 0
    md = capsys.readouterr().out
    assert (
        "row 4 (ResNet-preact-20 / 2048 / 1.6 / cosine; 8.73 here) also fills "
        "bs_lr_linear_scaling_cosine_200 row 2 (8.87)"
    ) in md
    assert "bs_lr_good_lr_longer_200ep" not in md  # 8.73 there too
    assert main(["table", "bs_lr_linear_scaling_cosine_200", "--tracking-uri", published_store]) == 0
    md = capsys.readouterr().out
    assert "bs_lr_good_lr_longer_200ep row 2 (8.73), bs_lr_initial_lr_bs2048 row 4 (8.73)" in md
    for tid in ("bs_lr_initial_lr_bs1024", BS128):  # equal published values, or one table only
        assert main(["table", tid, "--tracking-uri", published_store]) == 0
        assert "two different published values" not in capsys.readouterr().out


def test_report_has_the_verdicts(published_store: str, tmp_path: Path) -> None:
    assert main(["report", "--out", str(tmp_path), "--tracking-uri", published_store]) == 0
    index, page = (tmp_path / "index.md").read_text(), (tmp_path / "index.html").read_text()
    line = "1 of 3 rows within noise, 1 better, 1 worse (4 without a finished run)"
    assert f"- {BS128}: {line}" in index and f"Verdicts: {line}" in index and "| verdict |" in index
    assert f"<a href='#{BS128}'>{BS128}</a>: {line}" in page and "<th>verdict</th>" in page
    assert "two different published values" in (tmp_path / "bs_lr_initial_lr_bs2048.md").read_text()

"""Tables you can trust: smoke runs kept apart from full runs, a verdict per row, and the trials that
face two different published values, checked on a real SQLite MLflow store and by hand-computed values."""

from __future__ import annotations

import csv
import io
import math
import random
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import sweeplab.tracking  # noqa: F401 - first: it turns MLflow telemetry off before mlflow loads
from mlflow_store import fresh_uri, run_trial
from sweeplab import reference
from sweeplab.analysis import tables, verdicts
from sweeplab.cli import main
from sweeplab.tracking import Tracker

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow")


# --- the verdict rule, by hand -------------------------------------------------------------------


def test_binomial_sd_median_variance_and_t_quantiles() -> None:
    # sqrt(7 x 93 / 10000) = sqrt(0.0651); at 0% the count is kept one image in
    assert verdicts.binomial_sd(7.0) == pytest.approx(0.255147, abs=1e-6)
    assert verdicts.binomial_sd(0.0) == verdicts.binomial_sd(0.01) == pytest.approx(math.sqrt(0.01 * 99.99 / 1e4))
    assert [verdicts.median_variance(n) for n in (1, 2, 3)] == [1.0, 0.5, 0.4487]
    assert verdicts.median_variance(20) == pytest.approx(math.pi / 40)
    # two-sided 96% quantiles of Student's t (the 98th percentile of the tables): 4.849, 2.998, 2.612, 2.172
    for dof, t in ((2, 4.8487), (4, 2.9985), (6, 2.6122), (24, 2.1715), (1, 15.8945)):
        assert verdicts.t_quantile(0.96, dof) == pytest.approx(t, abs=1e-4)
    assert verdicts.t_coverage(verdicts.t_quantile(0.96, 7), 7) == pytest.approx(0.96)


def test_a_one_seed_row_judged_by_the_prior_alone() -> None:
    # sd(7.5) = 0.65 x sqrt(7.5 x 92.5) / 100 = 0.17120, sd(7.0) = 0.65 x 0.255147 = 0.16585;
    # band = t(96%, 4 dof) 2.99853 x sqrt(0.17120^2 + 0.16585^2) = 0.7147
    word, band = verdicts.verdict([7.5], 7.0)
    assert word == "consistent" and band == pytest.approx(0.7147, abs=1e-4)
    # beyond the band, with no seed spread measured: no claim either way
    assert verdicts.verdict([9.5], 7.0)[0] == "needs more seeds"
    assert verdicts.verdict([5.0], 7.0)[0] == "needs more seeds"
    assert verdicts.verdict([], 7.0) == ("-", None) and verdicts.verdict([7.5], None) == ("-", None)


def test_three_tight_seeds_are_not_a_difference() -> None:
    # The case a row's own sd got wrong: [8.0, 8.02, 8.01] (sd 0.01) against 8.2 was "better" for a 0.19 gap.
    # r^2 = (2 x 0.0001 / binomial_sd(8.01)^2 + 4 x 0.65^2) / (2 + 4) = (0.0027143 + 1.69) / 6: r = 0.53115;
    # band = t(96%, 6) 2.61224 x sqrt(0.4487 x (r x 0.27145)^2 + (r x 0.27436)^2) = 0.4567
    pooled = verdicts.noise([[8.0, 8.02, 8.01]], "this row")
    assert (pooled.ratio, pooled.dof) == (pytest.approx(0.53115, abs=1e-5), 2)
    word, band = verdicts.verdict([8.0, 8.02, 8.01], 8.2, 1, pooled)
    assert word == "consistent" and band == pytest.approx(0.4567, abs=1e-4)


def test_noise_pools_scaled_variances_with_the_prior() -> None:
    # variances 0.04 at mean 5.2 (2 dof) and 0.08 at mean 1.2 (1 dof), each over binomial_sd(mean)^2
    groups = [[5.0, 5.2, 5.4], [1.0, 1.4], [9.0]]
    ss = 2 * 0.04 / (5.2 * 94.8 / 1e4) + 0.08 / (1.2 * 98.8 / 1e4)
    found = verdicts.noise(groups, "test")
    assert found.dof == 3 and found.ratio == pytest.approx(math.sqrt((ss + 4 * 0.65**2) / 7))
    assert verdicts.noise([[9.0], [], [3.0]]) == verdicts.PRIOR and not verdicts.PRIOR.measured
    assert found.sd(50.0) == pytest.approx(found.ratio * 0.5)


def test_measured_noise_allows_better_and_worse_and_a_median_of_k_narrows_nothing_it_should_not() -> None:
    pooled = verdicts.Noise(0.65, 20, "test")  # t(96%, 24) = 2.17154
    # one seed vs one run at 7%: band = 2.17154 x 0.65 x sqrt(0.255147^2 x 2) = 0.5094
    assert verdicts.verdict([7.0], 7.5, 1, pooled)[0] == "consistent"
    assert verdicts.verdict([7.0], 7.8, 1, pooled)[0] == "better"
    assert verdicts.verdict([8.0], 7.0, 1, pooled)[0] == "worse"
    # a published median of 3 is less noisy than one run: the band shrinks
    assert verdicts.verdict([7.0], 7.0, 3, pooled)[1] < verdicts.verdict([7.0], 7.0, 1, pooled)[1]


def test_published_runs_read_from_the_column_and_the_cell() -> None:
    lars = reference.get("lars_bs4096")  # "Test Error (median of 3 runs)", SGD rows "10.57 (1 run)"
    kinds = {tables.published_runs(lars, i) for i in range(len(lars.rows))}
    assert kinds == {1, 3} and tables.published_runs(lars, 0) == 1
    assert tables.published_runs(reference.get("cifar10_residual_units"), 0) == 5
    assert tables.published_runs(reference.get("precision_fp16_1080ti"), 0) == 1
    assert tables.published_runs(reference.get("flax_wrn26_10"), 0) == 1


def test_published_cells_read_as_errors() -> None:
    assert tables.published_error("10.57 (1 run)", "error") == 10.57
    assert tables.published_error("0.82 (best 0.67)", "error") == 0.82
    assert tables.published_error("4.45%", "error") == 4.45
    assert tables.published_error("94.1%", "accuracy") == pytest.approx(5.9)
    assert tables.published_error("about 93%", "accuracy") == pytest.approx(7.0)
    assert tables.published_error("", "error") is None and tables.published_error("n/a", "error") is None


def test_summary_line() -> None:
    words = ["consistent", "consistent", "better", "worse", "needs more seeds", "-", "-", "-", "-"]
    assert verdicts.summary(words, measured=6, total=9) == (
        "2 of 5 rows consistent, 1 better, 1 worse, 1 needs more seeds "
        "(1 measured without a published value; 3 without a finished run)"
    )
    assert verdicts.summary(["consistent"] * 14 + ["better"] * 3 + ["worse"] * 3, 20, 20) == (
        "14 of 20 rows consistent, 3 better, 3 worse, 0 need more seeds"
    )
    assert verdicts.summary(["-"] * 3, measured=0, total=3) == "no row has a finished run yet"
    assert (
        verdicts.summary(["-"] * 3, measured=2, total=3)
        == "no measured row has a published value (2 of 3 rows measured)"
    )


# --- the verdict rule, by simulation --------------------------------------------------------------

# A table of eight rows at CIFAR-10-like error levels, every row run with the same number of seeds, ours
# and the published run (one) drawn from normal noise of sd r x binomial_sd(level); 2,000 tables a case.
LEVELS = [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0]
TABLES = 2000


def _simulate(seeds: int, ratio: float, gap: float = 0.0, related: bool = False, rng_seed: int = 24) -> dict:
    """Fractions of each verdict; `gap` shifts ours by that many sds (alternately up and down); `related`:
    one-seed tables judged by the seed spread of eight other 3-seed configs of the same noise."""
    rng = random.Random(rng_seed)
    counts: Counter[str] = Counter()
    for _ in range(TABLES):
        drawn = []
        for i, level in enumerate(LEVELS):
            sd = ratio * verdicts.binomial_sd(level)
            ours = level + gap * sd * (1 if i % 2 else -1)
            drawn.append(([rng.gauss(ours, sd) for _ in range(seeds)], rng.gauss(level, sd)))
        pooled = verdicts.noise([ours for ours, _ in drawn])
        if related:
            assert not pooled.measured
            other = [[rng.gauss(level, ratio * verdicts.binomial_sd(level)) for _ in range(3)] for level in LEVELS]
            pooled = verdicts.noise(other, "other configs")
        for ours, value in drawn:
            counts[verdicts.verdict(ours, value, 1, pooled)[0]] += 1
    total = sum(counts.values())
    found = {word: counts[word] / total for word in verdicts.VERDICTS}
    return found | {"flagged": found["better"] + found["worse"]}


@pytest.mark.parametrize("seeds", [1, 3, 5])
@pytest.mark.parametrize("ratio", [verdicts.PRIOR_RATIO, 0.45])
def test_same_distribution_is_consistent_at_least_95_percent(seeds: int, ratio: float) -> None:
    # the noise the prior assumes, and quieter noise (ours and the published run drawn alike)
    found = _simulate(seeds, ratio)
    assert found["consistent"] >= 0.95, found


def test_one_seed_rows_judged_by_other_tables_are_consistent_at_least_95_percent() -> None:
    found = _simulate(1, verdicts.PRIOR_RATIO, related=True)
    assert found["consistent"] >= 0.95 and found["needs more seeds"] == 0, found


@pytest.mark.parametrize("ratio", [verdicts.PRIOR_RATIO, 0.5])
def test_a_gap_of_4_sd_is_flagged_at_least_80_percent_with_3_seeds(ratio: float) -> None:
    found = _simulate(3, ratio, gap=4.0)
    assert found["flagged"] >= 0.80, found
    assert found["needs more seeds"] == 0  # the table's seeds measure the noise: claims are allowed


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
    for seed, err in enumerate([7.0, 7.2, 7.4]):  # median 7.2, sd 0.2 vs 7.28: consistent
        run_trial(t, f"r2_s{seed}", 0.4, 5e-4, seed=seed, errors=[20.0, err], rows={BS128: 2})
    # r pooled from those seeds and the prior: (2 x 0.04 / binomial_sd(7.2)^2 + 4 x 0.65^2) / 6 = 0.6937^2, t(96%, 6)
    # 2.61224: bands 0.566 (row 3), 0.696 (8.5 vs 7.54), 0.715 (8.0 vs 9.03)
    run_trial(t, "r1", 0.8, 5e-4, seed=0, errors=[20.0, 8.5], rows={BS128: 1})  # +0.96 > 0.696: worse
    run_trial(t, "r0", 1.6, 5e-4, seed=0, errors=[20.0, 8.0], rows={BS128: 0})  # -1.03 beyond 0.715: better
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
    assert head[head.index("seeds") + 1 : head.index("seeds") + 3] == ["verdict", "band"]
    col = {name: [r[head.index(name)] for r in rows] for name in ("ours", "seeds", "verdict", "band")}
    assert col["ours"][:3] == ["8.00", "8.50", "7.20"] and col["seeds"][:3] == ["1", "1", "3"]
    assert col["verdict"] == ["better", "worse", "consistent", "-", "-", "-", "-"]
    assert col["band"] == ["±0.72", "±0.70", "±0.57", "", "", "", ""]
    line = "1 of 3 rows consistent, 1 better, 1 worse, 0 need more seeds (4 without a finished run)"
    assert err == f"sweeplab: {BS128}: {line}\n"
    assert main(["table", BS128, "--tracking-uri", published_store]) == 0
    md = capsys.readouterr().out
    # the verdict line heads the table, the rule and the sd behind it close it
    assert md.startswith(f"## {BS128}: ") and md.split("\n")[2] == f"Verdicts: {line}"
    assert "shrunk towards the prior r = 0.65" in md and "'needs more seeds' = beyond it" in md
    assert "This table's sd: r = 0.69 from this table's rows with >= 2 seeds (2 degrees of freedom)" in md
    assert main(["table", BS128, "--tracking-uri", published_store, "--format", "html"]) == 0
    html = capsys.readouterr().out
    assert f"</h2>\n<p><strong>Verdicts: {line}</strong></p>\n<table>" in html and "<th>band</th>" in html
    assert main(["table", BS128, "--summary", "--tracking-uri", published_store]) == 0
    assert capsys.readouterr().out == f"{BS128}: {line}\n"
    # --smoke: the one smoke trial only, 80 against 7.28 with no smoke seeds anywhere: the prior alone
    assert main(["table", BS128, "--smoke", "--summary", "--tracking-uri", published_store]) == 0
    assert capsys.readouterr().out == (
        f"{BS128} (smoke run): 0 of 1 rows consistent, 0 better, 0 worse, 1 needs more seeds "
        "(6 without a finished run)\n"
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
    line = "1 of 3 rows consistent, 1 better, 1 worse, 0 need more seeds (4 without a finished run)"
    assert lines[3].split(None, 1)[1] == line
    # 8.8 vs 8.73 and 8.1 vs 8.08, one seed each: r from the store's 3-seed config of the same dataset and model
    assert lines[4].split(None, 1)[1] == (
        "2 of 2 rows consistent, 0 better, 0 worse, 0 need more seeds (8 without a finished run)"
    )
    assert main(["table", "bs_lr_good_lr_longer_200ep", "--tracking-uri", published_store]) == 0
    assert "r = 0.69 from 1 config of fashion_mnist / resnet_preact elsewhere in the store" in capsys.readouterr().out
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
    line = "1 of 3 rows consistent, 1 better, 1 worse, 0 need more seeds (4 without a finished run)"
    assert f"- {BS128}: {line}" in index and "| verdict | band |" in index
    # each table opens with its verdict line
    assert f"### {BS128}: {reference.get(BS128).title}\n\nVerdicts: {line}\n\n| Model |" in index
    assert f"<a href='#{BS128}'>{BS128}</a>: {line}" in page and "<th>verdict</th>" in page
    assert "two different published values" in (tmp_path / "bs_lr_initial_lr_bs2048.md").read_text()

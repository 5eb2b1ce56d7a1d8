"""Every sweep file compiles, and together the sweeps fill every reference table exactly once.

Per sweep: each compiled point fills at least one reference row, no row is filled by two points, and the
trial count is (points) x (seeds), so `--dry-run`'s trial count is the rows a sweep fills times its seeds.
Across sweeps: each of the reference tables has a sweep, and each of its rows is filled by exactly one
point of one sweep (rows whose reference value is empty included: those are runs the reference skipped).
Smoke blocks stay small enough for a 2-core CPU. Sweeps are found by glob: a new file is tested as is.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from functools import cache
from pathlib import Path

import pytest

from sweeplab import models
from sweeplab import reference as ref
from sweeplab.search_spaces import Sweep, load

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
IDS = [p.name for p in SWEEPS]
SEED = "train.seed"


@cache
def compiled(path: Path, smoke: bool = False) -> Sweep:
    return load(path, smoke=smoke)


def point_key(point: dict) -> tuple:
    """A trial's point without its seed: the grid point it repeats."""
    return tuple(sorted((k, repr(v)) for k, v in point.items() if k != SEED))


def reference_tables(sweep: Sweep) -> list[str]:
    """The tables of `sweep` that have reference rows (sweeplab's own tables number their rows themselves)."""
    return [tid for tid in sweep.tables if not ref.tables()[tid].match]


def test_sweeps_found() -> None:
    assert len(SWEEPS) >= 30


@pytest.mark.parametrize("path", SWEEPS, ids=IDS)
def test_sweep_compiles_with_one_point_per_row(path: Path) -> None:
    sweep = compiled(path)
    trials = sweep.trials()
    assert trials, f"{path.name}: no trials"
    if sweep.search.name == "optuna" and not sweep.tables:
        return  # a search (its sampler picks the points as results come) fills no table row by row
    assert sweep.tables, f"{path.name}: fills no table"
    by_point: dict[tuple, list] = defaultdict(list)
    for trial in trials:
        by_point[point_key(trial.point)].append(trial)
    # every point runs once per seed, with seeds 0 .. seeds-1
    for key, group in by_point.items():
        seeds = sorted(t.config.train.seed for t in group)
        assert seeds == list(range(sweep.seeds)), f"{path.name}: point {key} has seeds {seeds}"
    assert len(trials) == len(by_point) * sweep.seeds
    # every point fills at least one row, all its seeds fill the same rows, and no row has two points
    filled: Counter = Counter()
    for key, group in by_point.items():
        rows = group[0].rows
        assert rows, f"{path.name}: point {dict(key)} matches no row of {list(sweep.tables)}"
        assert all(t.rows == rows for t in group), f"{path.name}: seeds of {dict(key)} fill different rows"
        filled.update(rows.items())
    twice = [row for row, n in filled.items() if n > 1]
    assert not twice, f"{path.name}: (table, row) filled by more than one point: {twice}"
    # each table the sweep names gets at least one row from it
    for tid in sweep.tables:
        assert any(t == tid for t, _ in filled), f"{path.name}: fills no row of table {tid}"


@pytest.mark.parametrize("path", SWEEPS, ids=IDS)
def test_dry_run_prints_the_trial_count(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`sweeplab run SWEEP --dry-run` (in-process, no Ray) exits 0 and counts rows x seeds."""
    from sweeplab import cli

    assert cli.main(["run", str(path), "--dry-run"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"{len(compiled(path).trials())} trials"), last


@pytest.mark.parametrize("path", SWEEPS, ids=IDS)
def test_sweep_seeds_match_the_reference_statistic(path: Path) -> None:
    """A table that reports a median of N runs is swept with at least N seeds."""
    sweep = compiled(path)
    for tid in reference_tables(sweep):
        for column in ref.tables()[tid].columns:
            m = re.search(r"median of (\d+)", column)
            if m:
                assert sweep.seeds >= int(m.group(1)), f"{path.name}: {tid} reports '{column}'"


@pytest.mark.parametrize("path", SWEEPS, ids=IDS)
def test_sweep_smoke_block_is_small(path: Path) -> None:
    sweep = compiled(path, smoke=True)
    trials = sweep.trials()
    assert 1 <= len(trials) <= 8, f"{path.name}: smoke has {len(trials)} trials"
    for trial in trials:
        c = trial.config
        assert c.train.epochs <= 3, f"{path.name}: smoke trial runs {c.train.epochs} epochs"
        if c.data.name == "synthetic":
            assert c.data.synthetic_train <= 2048
        else:
            assert c.data.name == "fashion_mnist" and 0 < c.data.train_subset <= 6000, (
                f"{path.name}: smoke data must be synthetic or a Fashion-MNIST subset"
            )
        channels = c.data.synthetic_shape[0] if c.data.name == "synthetic" else 1
        size = models.num_parameters(models.build(c.model.name, 10, channels, **c.model.options))
        # (ResNeXt-29 cannot go below ~0.7M: its stage widths 256/512/1024 are fixed by the paper)
        assert size < 1_000_000, f"{path.name}: smoke model {c.model.name} has {size} parameters"


def test_every_reference_row_is_filled_by_exactly_one_sweep() -> None:
    owners: dict[tuple[str, int], list[str]] = defaultdict(list)
    for path in SWEEPS:
        sweep = compiled(path)
        seen = {(tid, row) for t in sweep.trials() for tid, row in t.rows.items() if tid in reference_tables(sweep)}
        for key in seen:
            owners[key].append(path.name)
    missing, doubled = [], []
    for tid, table in ref.tables().items():
        if table.match:
            continue  # sweeplab's own tables (quickstart) have no reference rows
        for i, row in enumerate(table.rows):
            who = owners.get((tid, i), [])
            if not who:
                missing.append(f"{tid}[{i}] {row[0]!r}")
            elif len(who) > 1:
                doubled.append(f"{tid}[{i}] by {who}")
    assert not missing, "rows no sweep fills:\n" + "\n".join(missing)
    assert not doubled, "rows filled by two sweeps:\n" + "\n".join(doubled)


def test_all_reference_tables_are_present() -> None:
    """The 45 tables of the reference README and the 4 of the Flax example and the fast-training posts."""
    with_rows = [tid for tid, t in ref.tables().items() if not t.match]
    assert len(with_rows) == 49

"""Sweep-level benchmarks, run through the real CLI and read back from MLflow.

overhead: wall-clock of `sweeplab run` against the sum of its trials' own fit times (the epochs'
          time/epoch_s), and the time from the command's start to the first trial's first step.
asha:     a Fashion-MNIST lr x weight-decay grid run in full (FIFO) and under ASHA: the best config
          each finds, its test error in the full grid, and the epochs each spent.

    python benchmarks/sweeps.py overhead [--sweep sweeps/quickstart.yaml] [--max-concurrent 1] [--repeat 3]
    python benchmarks/sweeps.py asha [--epochs 9] [--train-subset 10000]
    python benchmarks/sweeps.py packing [--per-device 1 2 4]

packing:  a sweep of small ResNet-preact-20 trials on CIFAR-shaped synthetic data, packed 1, 2 and 4
          per device (fractional GPUs on a GPU; on a CPU the cores are split between the trials):
          the aggregate training images/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from mlflow import MlflowClient

import sweeplab  # noqa: F401  (sets the no-telemetry switches before mlflow is imported)

ROOT = Path(__file__).resolve().parents[1]


def run_sweep(sweep: Path, work: Path, name: str, *extra: str) -> tuple[float, float, list[dict]]:
    """Run a sweep in its own storage and store; return (wall s, start epoch time, trials)."""
    uri = f"sqlite:///{work / 'mlflow.db'}"
    cmd = [
        sys.executable,
        "-m",
        "sweeplab.cli",
        "run",
        str(sweep),
        "--name",
        name,
        "--storage",
        str(work / "ray"),
        "--tracking-uri",
        uri,
        "--num-cpus",
        str(os.cpu_count()),
        *extra,
    ]
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.time() - start
    client = MlflowClient(uri)
    exps = client.search_experiments()
    runs = client.search_runs(
        [e.experiment_id for e in exps], "tags.`sweeplab.trial_id` IS NOT NULL", max_results=10_000
    )
    trials = []
    for r in runs:
        hist = {k: client.get_metric_history(r.info.run_id, k) for k in ("val/error", "time/epoch_s", "epoch")}
        epochs = sorted(hist["epoch"], key=lambda m: m.step)
        trials.append(
            {
                "params": r.data.params,
                "tags": r.data.tags,
                "epochs": len(epochs),
                "val_error": r.data.metrics.get("val/error"),
                "fit_s": sum(m.value for m in hist["time/epoch_s"]),
                "end": epochs[-1].timestamp / 1000 if epochs else None,
                # the first epoch began `time/epoch_s` before its metrics were logged
                "first_step": (epochs[0].timestamp / 1000 - hist["time/epoch_s"][0].value) if epochs else None,
            }
        )
    return wall, start, trials


def cpu_times() -> list[int]:
    """The machine's CPU counters (jiffies): user nice system idle iowait irq softirq steal."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]


def overhead(args: argparse.Namespace) -> None:
    firsts, ratios = [], []
    for _ in range(args.repeat):
        before = cpu_times()
        with tempfile.TemporaryDirectory(prefix="sweeplab-bench-") as tmp:
            extra = ["--smoke"] + (["--max-concurrent", str(args.max_concurrent)] if args.max_concurrent else [])
            wall, start, trials = run_sweep(ROOT / args.sweep, Path(tmp), "overhead", *extra)
        spent = [b - a for a, b in zip(before, cpu_times())]
        fit = sum(t["fit_s"] for t in trials)
        first = min(t["first_step"] for t in trials if t["first_step"]) - start
        tail = start + wall - max(t["end"] for t in trials if t["end"])
        firsts.append(first)
        ratios.append(wall / fit)
        print(
            f"{args.sweep} --smoke, max concurrent {args.max_concurrent or 'as in the sweep'}: {len(trials)} trials, "
            f"{sum(t['epochs'] for t in trials)} epochs; CPU stolen by the hypervisor "
            f"{100 * spent[7] / max(1, sum(spent)):.1f}%"
        )
        print(
            f"wall {wall:.1f} s | sum of trial fit times {fit:.1f} s | wall / fit {wall / fit:.2f} "
            f"| command start -> first step {first:.1f} s | last epoch logged -> command exit {tail:.1f} s"
        )
        if args.max_concurrent == 1:  # trials back to back: what is left is the hand-over between trials
            print(
                f"between trials: {wall - fit - first - tail:.1f} s in all, "
                f"{(wall - fit - first - tail) / max(1, len(trials) - 1):.2f} s per hand-over",
                flush=True,
            )
    # The first run also reads torch's and Ray's files from disk where the OS had evicted them (this
    # project's VM pages idle memory out within minutes); the later runs show the warm figure.
    for label, sl in (("all runs", slice(None)), ("runs 2+ (warm page cache)", slice(1, None))):
        f, r = firsts[sl], ratios[sl]
        if len(f) > 1:
            print(
                f"median of {label}: command start -> first step {statistics.median(f):.1f} s "
                f"(range {min(f):.1f}-{max(f):.1f}), wall / fit {statistics.median(r):.2f} "
                f"(range {min(r):.2f}-{max(r):.2f})"
            )


def _grid_sweep(path: Path, scheduler: dict, args: argparse.Namespace) -> None:
    lrs, wds = [0.01, 0.03, 0.1, 0.3], [5e-5, 5e-4, 5e-3]
    spec = {
        "name": path.stem,
        "config": str(ROOT / "configs/fashion_mnist/resnet_preact20.yaml"),
        "overrides": {
            "train.epochs": args.epochs,
            "data.train_subset": args.train_subset,
            "model.depth": 8,
            "train.threads": 1,
            "data.device": "cpu",
        },
        "space": {"optim.lr": {"grid": lrs}, "optim.weight_decay": {"grid": wds}},
        "search": {"name": "grid"},
        "scheduler": scheduler,
        "max_concurrent": 2,
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "smoke": {},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def asha(args: argparse.Namespace) -> None:
    found = {}
    with tempfile.TemporaryDirectory(prefix="sweeplab-bench-") as tmp:
        for kind, sched in (
            ("grid", {"name": "fifo"}),
            ("asha", {"name": "asha", "grace_period": 1, "reduction_factor": 3}),
        ):
            path = Path(tmp) / f"fmnist_{kind}.yaml"
            _grid_sweep(path, sched, args)
            wall, _, trials = run_sweep(path, Path(tmp) / kind, kind)
            found[kind] = (wall, trials)
    key = lambda t: (t["params"]["optim.lr"], t["params"]["optim.weight_decay"])  # noqa: E731
    grid_wall, grid = found["grid"]
    asha_wall, stopped = found["asha"]
    full = {key(t): t["val_error"] for t in grid}
    g_best = min(grid, key=lambda t: t["val_error"])
    finished = [t for t in stopped if t["epochs"] == args.epochs]
    a_best = min(finished, key=lambda t: t["val_error"])
    g_epochs, a_epochs = sum(t["epochs"] for t in grid), sum(t["epochs"] for t in stopped)
    print(f"grid of {len(grid)} configs x {args.epochs} epochs, ResNet-preact-8, {args.train_subset} FMNIST images")
    print(
        f"full grid: best lr={key(g_best)[0]} wd={key(g_best)[1]} val/error {g_best['val_error']:.2f}% "
        f"| {g_epochs} epochs | wall {grid_wall:.0f} s"
    )
    print(
        f"ASHA     : best lr={key(a_best)[0]} wd={key(a_best)[1]} val/error {a_best['val_error']:.2f}% "
        f"(same config in the full grid: {full[key(a_best)]:.2f}%) | {a_epochs} epochs "
        f"({100 * a_epochs / g_epochs:.0f}% of the grid's) | wall {asha_wall:.0f} s | "
        f"{len(stopped) - len(finished)} of {len(stopped)} trials stopped early"
    )
    print(f"gap to the grid's best: {full[key(a_best)] - g_best['val_error']:+.2f} points")


def packing(args: argparse.Namespace) -> None:
    import torch

    gpu = torch.cuda.is_available()
    cores = os.cpu_count() or 1
    for k in args.per_device:
        with tempfile.TemporaryDirectory(prefix="sweeplab-bench-") as tmp:
            path = Path(tmp) / f"pack{k}.yaml"
            resources = (
                {"workers": 1, "cpus_per_worker": max(1, cores // (2 * k)), "gpus_per_worker": 1 / k}
                if gpu
                else {"workers": 1, "cpus_per_worker": max(1, cores // k)}
            )
            spec = {
                "name": f"pack{k}",
                "config": str(ROOT / "configs/cifar10/resnet_preact20.yaml"),
                "overrides": {
                    "data.name": "synthetic",
                    "data.synthetic_shape": [3, 32, 32],
                    "data.synthetic_train": args.images,
                    "data.synthetic_test": 1000,
                    "train.epochs": args.epochs,
                    "train.threads": 0 if gpu else max(1, cores // k),
                    "train.channels_last": gpu,
                    "train.precision": "bf16" if gpu else "fp32",
                },
                "space": {"train.seed": {"grid": list(range(args.trials))}},
                "search": {"name": "grid"},
                "scheduler": {"name": "fifo"},
                "max_concurrent": k,
                "resources": resources,
            }
            path.write_text(yaml.safe_dump(spec, sort_keys=False))
            _, _, trials = run_sweep(path, Path(tmp), f"pack{k}")
        images = sum(t["epochs"] for t in trials) * args.images
        busy = max(t["end"] for t in trials) - min(t["first_step"] for t in trials)
        print(
            f"{k} per device: {len(trials)} trials, aggregate {images / busy:,.0f} training images/s "
            f"(from first step to last epoch, evaluation included)",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("overhead")
    p.add_argument("--sweep", default="sweeps/quickstart.yaml")
    p.add_argument("--max-concurrent", type=int, default=1, help="1 isolates the overhead; 0 = the sweep's own")
    p.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh Ray and store; prints the median")
    p.set_defaults(fn=overhead)
    p = sub.add_parser("asha")
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--train-subset", type=int, default=10000)
    p.set_defaults(fn=asha)
    p = sub.add_parser("packing")
    p.add_argument("--per-device", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--images", type=int, default=20000)
    p.set_defaults(fn=packing)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()

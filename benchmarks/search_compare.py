"""Searches on one epoch budget: a plain grid, a grid under ASHA, and Optuna TPE under ASHA.

Fashion-MNIST at smoke scale (ResNet-preact-8, a training and a test subset, 3 epochs, cosine), run
through the real CLI and read back from MLflow (benchmarks/sweeps.py:run_sweep). The plain grid runs
8 configs in full (24 epochs); the two ASHA searches get 14 trials each, which ASHA (grace 1 epoch,
reduction factor 2) trims to about the same number of epochs. For each: the best config that ran all
its epochs, its val/error, the trials, the epochs spent and the wall time.

    python benchmarks/search_compare.py [--train-subset 5000] [--test-subset 2000] [--asha-trials 14]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweeps import ROOT, run_sweep

EPOCHS = 3
LRS = [0.02, 0.05, 0.1, 0.4]
WDS = [5e-4, 5e-3]
ASHA = {"name": "asha", "grace_period": 1, "reduction_factor": 2}


def searches(asha_trials: int) -> dict[str, dict]:
    """Name -> (space, search, scheduler) of each arm."""
    wide = [round(0.01 * 2 ** (i * 6.3 / (asha_trials // 2 - 1)), 4) for i in range(asha_trials // 2)]
    return {
        "plain grid": {"space": grid(LRS, WDS), "search": {"name": "grid"}, "scheduler": {"name": "fifo"}},
        "grid + ASHA": {"space": grid(wide, WDS), "search": {"name": "grid"}, "scheduler": ASHA},
        "Optuna TPE + ASHA": {
            "space": {"optim.lr": {"loguniform": [0.01, 0.8]}, "optim.weight_decay": {"loguniform": [1e-4, 1e-2]}},
            "search": {"name": "optuna", "sampler": "tpe", "num_samples": asha_trials, "seed": 0},
            "scheduler": ASHA,
        },
    }


def grid(lrs: list[float], wds: list[float]) -> dict:
    return {"optim.lr": {"grid": lrs}, "optim.weight_decay": {"grid": wds}}


def write(path: Path, arm: dict, args: argparse.Namespace) -> None:
    spec = {
        "name": path.stem,
        "config": str(ROOT / "configs/fashion_mnist/resnet_preact20.yaml"),
        "overrides": {
            "train.epochs": EPOCHS,
            "data.train_subset": args.train_subset,
            "data.test_subset": args.test_subset,
            "model.depth": 8,
            "train.threads": 1,
            "data.device": "cpu",
        },
        **arm,
        "max_concurrent": 2,
        "resources": {"workers": 1, "cpus_per_worker": 1},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--asha-trials", type=int, default=14)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sweeplab-bench-") as tmp:
        for i, (name, arm) in enumerate(searches(args.asha_trials).items()):
            path = Path(tmp) / f"arm{i}.yaml"
            write(path, arm, args)
            wall, _, trials = run_sweep(path, Path(tmp) / f"arm{i}", f"arm{i}")
            full = [t for t in trials if t["epochs"] == EPOCHS and t["val_error"] is not None]
            best = min(full, key=lambda t: t["val_error"])
            config = f"lr {float(best['params']['optim.lr']):.4g}, wd {float(best['params']['optim.weight_decay']):.3g}"
            rows.append((name, config, best["val_error"], len(trials), sum(t["epochs"] for t in trials), wall))
            print(f"{name}: done in {wall:.0f} s", flush=True)
    print(f"\nFashion-MNIST, ResNet-preact-8, {args.train_subset}/{args.test_subset} images, {EPOCHS} epochs")
    print("| search | best config found | its val/error | trials | epochs spent | wall |")
    print("|---|---|---:|---:|---:|---:|")
    for name, config, err, n, epochs, wall in rows:
        print(f"| {name} | {config} | {err:.2f}% | {n} | {epochs} | {wall:.0f} s |")


if __name__ == "__main__":
    main()

"""The errors that mean "bad input" (exit 2), the one "did you mean" helper they all use, and the one line
of any other error that a message quotes."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A bad config: the message names the offending key or file."""


class SweepError(ConfigError):
    """A bad sweep file: the message names the file and the key."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of `e` that names its cause ("" if it has none), at most `limit` characters."""
    # SQLAlchemy (under MLflow's store) puts "(raised as a result of Query-invoked autoflush; ...)" before the
    # cause ("(sqlite3.OperationalError) database or disk is full"), which is what a user can act on
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip() and not ln.startswith("(raised as a result of")]
    return (lines or [""])[0][:limit]


# What other tools (PyTorch Lightning, timm, HF Trainer, W&B and Tune examples) call sweeplab's keys. Spelling
# is no guide here: difflib finds 'optim.lars_eps' nearer to 'optim.learning_rate' than 'optim.lr'.
COMMON_NAMES = {
    **dict.fromkeys(("lr", "learning_rate", "base_lr", "initial_lr", "init_lr", "max_lr"), "optim.lr"),
    **dict.fromkeys(("wd", "weight_decay", "l2", "decay"), "optim.weight_decay"),
    **dict.fromkeys(
        ("batch_size", "bs", "batchsize", "train_batch_size", "per_device_train_batch_size"), "data.batch_size"
    ),
    **dict.fromkeys(("eval_batch_size", "test_batch_size", "per_device_eval_batch_size"), "data.eval_batch_size"),
    **dict.fromkeys(("epochs", "max_epochs", "num_epochs", "n_epochs", "num_train_epochs", "epoch"), "train.epochs"),
    **dict.fromkeys(("optimizer", "opt", "optimiser"), "optim.name"),
    **dict.fromkeys(("model", "arch", "architecture", "model_name", "net", "network"), "model.name"),
    **dict.fromkeys(("dataset", "dataset_name"), "data.name"),
    **dict.fromkeys(("seed", "random_seed", "manual_seed"), "train.seed"),
    **dict.fromkeys(("scheduler", "lr_scheduler", "schedule", "lr_schedule", "sched"), "sched.name"),
    **dict.fromkeys(("warmup", "warmup_epochs", "lr_warmup_epochs"), "sched.warmup_epochs"),
    **dict.fromkeys(("precision", "amp", "mixed_precision", "fp16", "dtype"), "train.precision"),
    **dict.fromkeys(("smoothing", "label_smoothing", "ls"), "augment.label_smoothing"),
    **dict.fromkeys(
        ("clip_grad", "grad_clip", "clip_grad_norm", "max_grad_norm", "gradient_clip_val"), "optim.grad_clip"
    ),
}


def common_name(key: str, candidates: Iterable[str]) -> str | None:
    """The candidate another tool's name for it stands for ('lr', 'optim.learning_rate', 'train.lr' ->
    'optim.lr'): by the table above, else the one candidate whose last part is the key's last part."""
    cands = [str(c) for c in candidates]
    leaf = key.rsplit(".", 1)[-1].strip().lower().replace("-", "_")
    known = COMMON_NAMES.get(leaf)
    if known is not None and known in cands and known != key:
        return known
    same = [c for c in cands if c.rsplit(".", 1)[-1] == leaf and c != key]
    return same[0] if len(same) == 1 else None


def suggest(key: object, candidates: Iterable[object], prefix: str = "", n: int = 1, cutoff: float = 0.5) -> str:
    """ "; did you mean 'optim.lr'?" for the candidate another tool's name stands for (`common_name`), else
    the `n` candidates spelled nearest to `key`, or "" when none is near."""
    cands = [str(c) for c in candidates]
    named = common_name(str(key), cands)
    if named is not None:
        return f"; did you mean {prefix + named!r}?"
    near = difflib.get_close_matches(str(key), cands, n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(repr(prefix + m) for m in near)}?" if near else ""

"""Semantic checks of a typed Config: ranges, names in registries, combinations that conflict."""

from __future__ import annotations

from sweeplab import models, schedules  # torch-free registries: validating a config never imports torch
from sweeplab.core.errors import ConfigError
from sweeplab.core.inputs import MAX_CPUS
from sweeplab.models import catalog, rules
from sweeplab.schema import (
    ACTIVATIONS,
    COMPILE_MODES,
    DATASETS,
    MIXERS,
    PRECISIONS,
    WARMUP_KINDS,
    WEIGHT_DECAY_ON,
    Config,
)


def _require(ok: bool, key: str, message: str, where: str) -> None:
    if not ok:
        raise ConfigError(f"'{key}'{where} {message}")


def _one_of(value: str, choices: list[str] | tuple[str, ...], key: str, where: str) -> None:
    _require(value in choices, key, f"is {value!r}; valid: {', '.join(choices)}", where)


def check(c: Config, where: str = "") -> None:
    """Raise ConfigError naming the first bad key of `c`."""
    d, a, o, s, t = c.data, c.augment, c.optim, c.sched, c.train
    _one_of(d.name, DATASETS, "data.name", where)
    _require(d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}", where)
    _require(d.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1", where)
    _require(d.train_subset >= 0, "data.train_subset", "must be >= 0 (0 = all)", where)
    _require(d.test_subset >= 0, "data.test_subset", "must be >= 0 (0 = all)", where)
    _require(
        d.device == "auto" or d.device.split(":")[0] in ("cpu", "cuda", "mps"),
        "data.device",
        f"is {d.device!r}; valid: auto, cpu, cuda, cuda:N, mps",
        where,
    )
    _require(
        len(d.synthetic_shape) == 3 and min(d.synthetic_shape) >= 1,
        "data.synthetic_shape",
        "must be [channels, height, width]",
        where,
    )
    _require(d.synthetic_classes >= 2, "data.synthetic_classes", "must be >= 2", where)
    _require(
        d.synthetic_train >= 1 and d.synthetic_test >= 1,
        "data.synthetic_train",
        "and data.synthetic_test must be >= 1",
        where,
    )

    name = c.model.name
    _require(isinstance(name, str), "model.name", f"must be a model name; valid: {', '.join(models.names())}", where)
    _one_of(name, models.names(), "model.name", where)
    try:  # the family's own rules (models/rules.py), without torch: e.g. a depth it cannot build
        models.check_options(name, c.model.options)
    except rules.OptionError as e:
        raise ConfigError(f"'{e.key}'{where} {e.message}") from None
    except ValueError as e:
        raise ConfigError(f"{e}{where}") from None

    _require(a.crop_padding >= 0, "augment.crop_padding", "must be >= 0", where)
    _require(a.cutout >= 0, "augment.cutout", "must be >= 0 (0 = off)", where)
    for key in ("cutout_prob", "random_erasing"):
        v = getattr(a, key)
        _require(0.0 <= v <= 1.0, f"augment.{key}", f"is a probability, got {v}", where)
    for key in MIXERS:
        _require(getattr(a, key) >= 0, f"augment.{key}", "must be >= 0 (0 = off)", where)
    _require(0.0 <= a.label_smoothing < 1.0, "augment.label_smoothing", "must be in [0, 1)", where)
    for key, top in (("random_erasing_area", 1.0), ("random_erasing_ratio", None)):
        v = getattr(a, key)
        _require(
            len(v) == 2 and 0 < v[0] <= v[1] and (top is None or v[1] <= top),
            f"augment.{key}",
            f"must be [lo, hi] with 0 < lo <= hi{' <= 1' if top else ''}, got {v}",
            where,
        )
    mixers = [k for k in MIXERS if getattr(a, k) > 0]
    # Two batch mixers would silently overwrite each other's targets: refuse instead.
    _require(
        len(mixers) <= 1,
        f"augment.{mixers[-1] if mixers else ''}",
        f"cannot be combined with augment.{mixers[0] if mixers else ''}: use one batch mixer "
        "(mixup, cutmix, ricap, dual_cutout) per run",
        where,
    )
    _require(a.dual_cutout == 0 or a.cutout > 0, "augment.dual_cutout", "needs augment.cutout > 0", where)

    _one_of(o.name, catalog.OPTIMIZERS, "optim.name", where)
    _require(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}", where)
    _require(0 <= o.momentum < 1, "optim.momentum", f"must be in [0, 1), got {o.momentum}", where)
    _require(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}", where)
    _require(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 = off)", where)
    _one_of(o.weight_decay_on, WEIGHT_DECAY_ON, "optim.weight_decay_on", where)
    _require(
        not o.no_weight_decay_on_bn or o.weight_decay_on in ("all", "kernels"),
        "optim.weight_decay_on",
        f"is {o.weight_decay_on!r} while optim.no_weight_decay_on_bn is true (which means 'kernels'): set one of them",
        where,
    )
    _require(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        "optim.betas",
        f"must be two numbers in [0, 1), got {o.betas}",
        where,
    )
    _require(o.lars_eps > 0, "optim.lars_eps", f"must be > 0, got {o.lars_eps}", where)
    _require(o.lars_trust_coefficient >= 0, "optim.lars_trust_coefficient", "must be >= 0 (0 = off)", where)
    _require(o.lars_threshold >= 0, "optim.lars_threshold", f"must be >= 0 (0 = off), got {o.lars_threshold}", where)
    _require(o.bn_bias_lr_factor > 0, "optim.bn_bias_lr_factor", f"must be > 0, got {o.bn_bias_lr_factor}", where)
    _require(
        o.bn_bias_weight_decay_factor >= 0,
        "optim.bn_bias_weight_decay_factor",
        f"must be >= 0, got {o.bn_bias_weight_decay_factor}",
        where,
    )

    _one_of(s.name, schedules.names(), "sched.name", where)
    _one_of(s.warmup_kind, WARMUP_KINDS, "sched.warmup_kind", where)
    _require(0 <= s.warmup_epochs <= t.epochs, "sched.warmup_epochs", "must be in [0, train.epochs]", where)
    _require(0 < s.warmup_start_factor <= 1, "sched.warmup_start_factor", "must be in (0, 1]", where)
    _require(0 < s.gamma <= 1, "sched.gamma", "must be in (0, 1]", where)
    _require(all(m > 0 for m in s.milestones), "sched.milestones", "must be positive", where)
    _require(s.sgdr_t0 > 0, "sched.sgdr_t0", f"must be > 0, got {s.sgdr_t0}", where)
    _require(s.sgdr_t_mult >= 1, "sched.sgdr_t_mult", f"must be >= 1, got {s.sgdr_t_mult}", where)
    _require(0 <= s.min_lr_factor <= 1, "sched.min_lr_factor", f"must be in [0, 1], got {s.min_lr_factor}", where)
    _require(0 < s.onecycle_peak < 1, "sched.onecycle_peak", f"must be in (0, 1), got {s.onecycle_peak}", where)
    _require(
        not (s.name == "onecycle" and s.warmup_epochs > 0),
        "sched.warmup_epochs",
        "must be 0 with sched.name=onecycle (the cycle's rising half is its warmup)",
        where,
    )

    _require(t.epochs >= 1, "train.epochs", f"must be >= 1, got {t.epochs}", where)
    _one_of(t.precision, PRECISIONS, "train.precision", where)
    _require(t.loss_scale >= 0, "train.loss_scale", f"must be >= 0 (0 = dynamic), got {t.loss_scale}", where)
    _require(
        t.loss_scale == 0 or t.precision == "fp16_pure",
        "train.loss_scale",
        f"applies to train.precision fp16_pure only (fp16 scales dynamically), not {t.precision!r}",
        where,
    )
    _require(
        not t.fp32_batchnorm or t.precision == "fp16_pure",
        "train.fp32_batchnorm",
        f"applies to train.precision fp16_pure only (the other precisions keep BatchNorm in fp32), not {t.precision!r}",
        where,
    )
    _one_of(t.activation, ACTIVATIONS, "train.activation", where)
    _require(t.celu_alpha > 0, "train.celu_alpha", f"must be > 0, got {t.celu_alpha}", where)
    _require(t.ghost_batch_size >= 0, "train.ghost_batch_size", "must be >= 0 (0 = off)", where)
    _require(
        t.ghost_batch_size == 0 or d.batch_size % t.ghost_batch_size == 0,
        "train.ghost_batch_size",
        f"must divide data.batch_size ({d.batch_size})",
        where,
    )
    _one_of(t.compile_mode, COMPILE_MODES, "train.compile_mode", where)
    _require(t.eval_every >= 1, "train.eval_every", "must be >= 1", where)
    # torch starts this many OpenMP threads: ~16k fail to start, 100k segfault (with the run folder written)
    _require(0 <= t.threads <= MAX_CPUS, "train.threads", f"must be in [0, {MAX_CPUS}] (0 = torch's default)", where)

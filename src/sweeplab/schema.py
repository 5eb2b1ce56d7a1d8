"""The config schema: six sections of typed keys with defaults, as plain dataclasses.

Pure data, no I/O and no sweeplab imports but the shared errors: every layer can read it. Loading
YAML, dotted overrides and validation live in `config.py` and `validate.py`, one layer up.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist", "kmnist", "synthetic")
# fp16 / bf16 = torch.autocast (fp32 weights; fp16 adds GradScaler) = apex O1; fp16_pure = apex O3: the whole model,
# BatchNorm included (unless train.fp32_batchnorm), its gradients and the optimiser state in half precision, no fp32
# master weights
PRECISIONS = ("fp32", "fp16", "bf16", "fp16_pure")
ACTIVATIONS = ("relu", "celu")
MIXERS = ("mixup", "cutmix", "ricap", "dual_cutout")  # augment keys that mix a batch: one per run
WARMUP_KINDS = ("linear", "exponential")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # torch.compile's modes
# optim.weight_decay_on: which trainable tensors weight decay applies to. all = every one; kernels = only those
# with more than one dimension (conv and linear weights: biases and BatchNorm scales/shifts are spared, as the
# Flax CIFAR-10 example's `x.ndim > 1` L2); not_bn = all but BatchNorm scales and shifts (the reference's
# argparse-era `--no_weight_decay_on_bn`, which spared the parameters named `bn`; biases elsewhere decay)
WEIGHT_DECAY_ON = ("all", "kernels", "not_bn")


@dataclass
class DataConfig:
    name: str = "cifar10"  # one of DATASETS
    root: str = "~/.cache/sweeplab/data"  # torchvision layout; offline copies are searched too
    download: bool = True  # try torchvision's download when files are missing
    batch_size: int = 128
    eval_batch_size: int = 1024  # evaluation has no backward pass: bigger is faster
    train_subset: int = 0  # first N of a seeded shuffle of the train set (0 = all)
    test_subset: int = 0  # first N test images (0 = all); for quick runs only
    device: str = "auto"  # auto = cuda if available, else cpu
    # synthetic data only: image shape, classes and set sizes
    synthetic_shape: list[int] = field(default_factory=lambda: [3, 32, 32])
    synthetic_classes: int = 10
    synthetic_train: int = 2048
    synthetic_test: int = 512


@dataclass
class AugmentConfig:
    random_crop: bool = True  # pad, then crop back to size at a random offset
    crop_padding: int = 4
    hflip: bool = True  # random horizontal flip (off for digits)
    normalize: bool = True  # per-channel dataset mean/std
    cutout: int = 0  # square mask side in px, 0 = off
    cutout_prob: float = 1.0
    cutout_inside: bool = False  # keep the mask's centre away from the border
    random_erasing: float = 0.0  # probability per image, 0 = off
    random_erasing_area: list[float] = field(default_factory=lambda: [0.02, 0.4])
    random_erasing_ratio: list[float] = field(default_factory=lambda: [0.3, 3.3333])
    mixup: float = 0.0  # Beta(alpha, alpha) alpha, 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) alpha, 0 = off
    ricap: float = 0.0  # Beta(beta, beta) beta, 0 = off
    dual_cutout: float = 0.0  # consistency-loss weight, 0 = off (needs cutout > 0)
    label_smoothing: float = 0.0  # epsilon


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd, adam, amsgrad, lars
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    no_weight_decay_on_bn: bool = False  # exclude BatchNorm and bias parameters (every 1-D tensor) from decay
    weight_decay_on: str = "all"  # all, kernels or not_bn (WEIGHT_DECAY_ON); no_weight_decay_on_bn true = kernels
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lars_eps: float = 1e-9
    lars_trust_coefficient: float = 0.0  # 0 = plain layer-wise ratio (the reference's default)
    lars_threshold: float = 0.01  # local lr 1 where a weight's norm is below this (the reference's 1e-2); 0 = off
    # BatchNorm shifts (biases) only: lr = factor x the scheduled lr, weight decay = factor x weight_decay
    # (the DAWNBench posts' 16x lr and 1/16 decay with frozen BN scales); 1 = like every other parameter
    bn_bias_lr_factor: float = 1.0
    bn_bias_weight_decay_factor: float = 1.0
    grad_clip: float = 0.0  # max global grad norm, 0 = off


@dataclass
class SchedConfig:
    name: str = "cosine"  # see sweeplab.schedules.names()
    warmup_epochs: float = 0.0
    warmup_kind: str = "linear"  # linear or exponential
    warmup_start_factor: float = 0.001  # lr at step 0 = lr * factor
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of epochs, or epochs if > 1
    gamma: float = 0.1  # multistep / piecewise decay factor
    min_lr_factor: float = 0.0  # cosine / linear end at lr * factor
    sgdr_t0: float = 10.0  # SGDR first period in epochs
    sgdr_t_mult: float = 2.0
    onecycle_peak: float = 0.2  # one-cycle: fraction of training at the peak lr


@dataclass
class TrainConfig:
    epochs: int = 160
    precision: str = "fp32"  # fp32, fp16 or bf16 (torch.autocast), fp16_pure (all in half; see PRECISIONS)
    loss_scale: float = 0.0  # fp16_pure only: static loss scale (apex O3's default is 1), 0 = dynamic (GradScaler's)
    # fp16_pure only: every BatchNorm layer (scale, shift, running statistics) stays float32 while the rest of the
    # model is half, as the reference's argparse-era `--fp16` (model.half(), then each BatchNorm2d .float())
    fp32_batchnorm: bool = False
    seed: int = 0
    channels_last: bool = (
        True  # NHWC: what tensor cores want, 1.3x on AVX-512 CPUs; AVX2 CPUs stay NCHW (engine.nhwc_is_safe)
    )
    compile: bool = False  # torch.compile the model
    compile_mode: str = "default"  # default | reduce-overhead (CUDA graphs) | max-autotune
    ghost_batch_size: int = 0  # BatchNorm statistics over chunks of this size, 0 = off
    flip_tta: bool = False  # average logits of the image and its mirror at eval
    eval_every: int = 1  # evaluate every N epochs (and always the first of a run or resume, and the last)
    threads: int = 0  # torch.set_num_threads on CPU, 0 = leave as is
    # applied by the engine to any model after it is built:
    activation: str = "relu"  # relu = the model's own; celu = every ReLU (module or functional) becomes CELU
    celu_alpha: float = 1.0  # CELU's alpha with activation celu (torch's default 1; the DAWNBench posts' 0.3)
    freeze_bn_scale: bool = False  # every BatchNorm scale (weight) stays at its initial value, not trained


@dataclass
class ModelConfig:
    """The model section: a registered model's name and its own options (models/catalog.py lists them).

    The YAML, `to_dict()` and the MLflow params keep the options beside the name, flat:
    `model: {name: wrn, depth: 28}` <-> ModelConfig("wrn", {"depth": 28}) <-> `model.name`, `model.depth`.
    """

    name: str = "resnet_preact"
    options: dict[str, Any] = field(default_factory=dict)  # only the options given; the builder has the rest

    def to_dict(self) -> dict[str, Any]:
        """{'name': ..., **options}, the section as the YAML writes it."""
        return {"name": self.name, **copy.deepcopy(self.options)}


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (YAML-safe), a copy: the config's own YAML layout, options beside model.name."""
        return {
            f.name: value.to_dict() if isinstance(value, ModelConfig) else dataclasses.asdict(value)
            for f in dataclasses.fields(self)
            for value in [getattr(self, f.name)]
        }

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, e.g. {'optim.lr': 0.1, ...}."""
        return flatten(self.to_dict())


# section name -> its dataclass, e.g. 'optim' -> OptimConfig
SECTIONS: dict[str, type[Any]] = {f.name: type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def valid_keys() -> list[str]:
    """Every dotted key of the fixed sections, plus model.name."""
    keys = ["model.name"]
    for name, cls in SECTIONS.items():
        if name != "model":
            keys += [f"{name}.{g.name}" for g in dataclasses.fields(cls)]
    return keys

"""The training loop: `fit(config, on_epoch)`. It knows nothing of Ray or MLflow.

Everything random is re-seeded from (seed, epoch) at the start of each epoch, so an epoch's
batches, augmentations and dropout masks do not depend on what ran before: a run resumed from
a checkpoint continues bit for bit as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sweeplab import ghost_bn, models, optim, schedules
from sweeplab.checkpoints import CHECKPOINT_VERSION
from sweeplab.checkpoints import CheckpointError as CheckpointError  # re-exported: callers load through the engine
from sweeplab.checkpoints import load_checkpoint as load_checkpoint
from sweeplab.data import augment, datasets
from sweeplab.data.loader import DeviceLoader
from sweeplab.models import tweaks
from sweeplab.precision import HalfScaler, autocast
from sweeplab.schema import Config

# on_epoch(metrics, checkpoint) where checkpoint() builds the resumable state only if asked for.
EpochCallback = Callable[[dict[str, float], Callable[[], dict[str, Any]]], None]
# on_step(step, steps, images): after each optimiser step of an epoch (1-based, of `steps`; `images` this
# rank has trained on so far), from shapes alone: no device sync, so a progress bar costs no speed.
StepCallback = Callable[[int, int, int], None]


def nhwc_is_safe(device: torch.device) -> bool:
    """Whether channels_last may be used: on CUDA, and on CPUs whose torch kernels are AVX-512 ones.
    On an AVX2-only CPU this torch build's oneDNN convolution backward corrupts the heap with NHWC
    (a strided 1x1 conv with < 8 input channels aborts with "corrupted double-linked list", with 1
    or 2 threads; BENCHMARKS.md), so those CPUs train NCHW."""
    return device.type == "cuda" or (
        device.type == "cpu" and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    )


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, epoch: int, rank: int = 0) -> None:
    """Seed torch's global RNGs (dropout, shake-shake) as a pure function of (seed, epoch, rank)."""
    torch.manual_seed(seed * 1_000_003 + epoch + 7_919 * rank)


def world() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def subset(data: datasets.Dataset, n_train: int, n_test: int, seed: int) -> datasets.Dataset:
    """The first n_train examples of a seeded shuffle of the training set, the first n_test test images."""
    if n_train and n_train < len(data.train_y):
        idx = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))[:n_train]
        data = datasets.Dataset(
            data.train_x[idx], data.train_y[idx], data.test_x, data.test_y, data.num_classes, data.mean, data.std
        )
    if n_test and n_test < len(data.test_y):
        data = datasets.Dataset(
            data.train_x,
            data.train_y,
            data.test_x[:n_test],
            data.test_y[:n_test],
            data.num_classes,
            data.mean,
            data.std,
        )
    return data


class Trainer:
    """The state of one training run: data, model, optimiser, scaler, step counter."""

    def __init__(self, config: Config, data: datasets.Dataset | None = None) -> None:
        c = self.config = config
        if c.train.threads:
            torch.set_num_threads(c.train.threads)
        self.device = resolve_device(c.data.device)
        self.rank, self.world = world()
        if c.data.batch_size % self.world:
            raise ValueError(f"data.batch_size {c.data.batch_size} is not divisible by {self.world} workers")
        data = subset(data or datasets.load(c.data), c.data.train_subset, c.data.test_subset, c.train.seed)
        a = c.augment
        channels_last = c.train.channels_last and nhwc_is_safe(self.device)
        common = dict(
            mean=data.mean, std=data.std, device=self.device, normalize=a.normalize, channels_last=channels_last
        )
        # data.batch_size is the global batch, as in the reference's multi-GPU table.
        self.train_loader = DeviceLoader(
            data.train_x,
            data.train_y,
            c.data.batch_size // self.world,
            train=True,
            seed=c.train.seed,
            random_crop=a.random_crop,
            crop_padding=a.crop_padding,
            hflip=a.hflip,
            rank=self.rank,
            world=self.world,
            **common,
        )
        self.test_loader = DeviceLoader(
            data.test_x, data.test_y, c.data.eval_batch_size, train=False, rank=self.rank, world=self.world, **common
        )
        torch.manual_seed(c.train.seed)  # model initialisation
        model = models.build(c.model.name, data.num_classes, data.shape[0], **c.model.options)
        ghost_bn.apply(model, c.train.ghost_batch_size)
        if c.train.freeze_bn_scale:  # before the optimiser is built: frozen scales are left out of it
            tweaks.freeze_bn_scales(model)
        self.model = model.to(
            self.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        self.half = c.train.precision == "fp16_pure"
        if self.half:  # weights, BatchNorm, gradients and optimiser state all in fp16 (apex O3) ...
            self.model.half()
            if c.train.fp32_batchnorm:  # ... or BatchNorm back in fp32: it takes half inputs, gives half outputs
                tweaks.float_batchnorm(self.model)
        forward: nn.Module = self.model
        if self.world > 1:  # DDP averages gradients across ranks; its constructor broadcasts rank 0's weights
            forward = DistributedDataParallel(forward, device_ids=[self.device] if self.device.type == "cuda" else None)
        # reduce-overhead captures the step in CUDA graphs: shapes are static (the ragged batch is dropped).
        self.forward = torch.compile(forward, mode=c.train.compile_mode) if c.train.compile else forward
        self.compiled = not c.train.compile  # becomes True once the first step has paid for compilation
        self.optimizer = optim.build(self.model, c.optim)
        self.scaler: torch.amp.GradScaler | HalfScaler = (
            HalfScaler(c.train.loss_scale)
            if self.half
            else torch.amp.GradScaler(self.device.type, enabled=c.train.precision == "fp16")
        )
        self.augment = augment.build(a, data.num_classes)
        self.epoch = 0  # completed epochs
        self.step = 0  # optimiser steps taken

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (the schedule is a pure function of `step`)."""
        return {
            "version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]

    def train_epoch(self, on_step: StepCallback | None = None) -> dict[str, float]:
        """One pass over the training set; returns train/loss, train/error and its timing."""
        c, model, opt = self.config, self.forward, self.optimizer
        loader = self.train_loader
        seed_everything(c.train.seed, self.epoch, self.rank)
        gen = loader.generator(self.epoch)
        model.train()
        # Accumulate on the device and read once per epoch: no host sync inside the step.
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.long)
        seen, steps = 0, len(loader)
        compile_s, timed_from = 0.0, 0
        self._sync()
        start = time.perf_counter()
        for i, (x, y) in enumerate(loader.epoch(self.epoch, gen)):
            if i == 1 and not self.compiled:  # report compilation apart from training speed
                self._sync()
                compile_s, timed_from, self.compiled = time.perf_counter() - start, seen, True
            lr = schedules.lr_at(self.step, c.optim.lr, c.sched, steps, c.train.epochs)
            optim.set_lr(opt, lr)  # each group's lr_factor times the schedule
            x, targets = self.augment(x, y, gen)
            with self._forward_context():
                logits = model(x.half() if self.half else x)
            if self.half:  # the loss in fp32 from the half logits; its gradient flows back in half
                logits = logits.float()
            loss = self.augment.loss(logits, targets)
            opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if c.optim.grad_clip > 0:
                self.scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.grad_clip)
            self.scaler.step(opt)
            self.scaler.update()
            self.step += 1
            loss_sum += loss.detach() * y.numel()
            wrong += (self.augment.predictions(logits).argmax(1) != self.augment.hard_labels(targets)).sum()
            seen += y.numel()
            if on_step is not None:
                on_step(i + 1, steps, seen)
        if self.world > 1:  # epoch metrics over all ranks' images: one all-reduce per epoch
            totals = torch.stack([loss_sum.double(), wrong.double(), torch.tensor(seen, device=self.device).double()])
            dist.all_reduce(totals)
            loss_sum, wrong, seen = totals[0], totals[1], int(totals[2].item())
            timed_from *= self.world  # every rank's first batch went to compilation
        self._sync()
        elapsed = time.perf_counter() - start
        self.compiled = True  # a one-step epoch cannot split compilation off; later epochs are not compiling
        self.last_lr = lr
        error = 100.0 * wrong.item() / seen
        out = {
            "train/loss": loss_sum.item() / seen,
            "train/error": error,
            "train/accuracy": 100.0 - error,  # percent, like the error: a sweep may maximise either name
            "time/train_s": elapsed,
            "time/images_per_s": (seen - timed_from) / (elapsed - compile_s),
        }
        if compile_s:
            out["time/compile_s"] = compile_s
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Test loss, error and accuracy (percent); with flip TTA the logits of image and mirror are averaged."""
        c, model = self.config, self.forward
        if self.world > 1:
            # Each rank scores its stride of the test set with rank 0's BatchNorm statistics, through
            # the bare model: DDP's wrapper would broadcast the buffers again for every batch.
            for buffer in self.model.buffers():
                dist.broadcast(buffer, 0)
            model = self.model
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        wrong = torch.zeros((), device=self.device, dtype=torch.long)
        for x, y in self.test_loader.epoch():
            if self.half:
                x = x.half()
            with self._forward_context():
                logits = model(x).float()
                if c.train.flip_tta:
                    logits = (logits + model(x.flip(3)).float()) / 2
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            wrong += (logits.argmax(1) != y).sum()
        n = self.test_loader.num_examples
        if self.world > 1:
            totals = torch.stack([loss_sum.double(), wrong.double()])
            dist.all_reduce(totals)
            loss_sum, wrong = totals[0], totals[1]
        error = 100.0 * wrong.item() / n
        return {"val/loss": loss_sum.item() / n, "val/error": error, "val/accuracy": 100.0 - error}

    def _forward_context(self) -> contextlib.ExitStack:
        """autocast (for fp16/bf16) and the activation swap (train.activation), around a forward pass."""
        stack = contextlib.ExitStack()
        stack.enter_context(autocast(self.device, self.config.train.precision))
        stack.enter_context(tweaks.activation(self.config.train.activation, self.config.train.celu_alpha))
        return stack

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def fit(
    config: Config,
    on_epoch: EpochCallback | None = None,
    *,
    checkpoint: dict[str, Any] | None = None,
    data: datasets.Dataset | None = None,
    on_step: StepCallback | None = None,
) -> dict[str, float]:
    """Train `config` to its last epoch (continuing from `checkpoint`); return the last metrics."""
    trainer = Trainer(config, data)
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
    metrics: dict[str, float] = {}
    measured = False  # the first epoch of a run (or of a resumed run) is evaluated: a scheduler ranks every report
    while trainer.epoch < config.train.epochs:
        start = time.perf_counter()
        train = trainer.train_epoch(on_step)
        trainer.epoch += 1
        last = trainer.epoch == config.train.epochs
        due = last or not measured or trainer.epoch % config.train.eval_every == 0
        val, measured = (trainer.evaluate(), True) if due else ({}, measured)
        metrics = {
            "epoch": trainer.epoch,
            "lr": trainer.last_lr,
            **train,
            **val,
            "time/epoch_s": time.perf_counter() - start,
        }
        if on_epoch is not None:
            on_epoch(metrics, trainer.state_dict)
    return metrics

"""Batch augmentation after the loader: per-image erasing, batch mixers, soft targets and the loss.

Every recipe turns (images, labels) into (images, soft targets) so one loss serves all of them:
https://arxiv.org/abs/1710.09412 (mixup) introduced the soft-target view the rest share.
Order: erasing ops (cutout, random erasing) on each image first, then at most one batch mixer.
All randomness comes from the caller's generator, so an epoch replays exactly on resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sweeplab.schema import MIXERS, AugmentConfig

Eraser = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def host_rng(gen: torch.Generator | None, device: torch.device) -> np.random.Generator:
    """A numpy generator seeded from `gen`, for the Beta draws and box corners of the mixers."""
    # torch's Beta/Gamma samplers take no generator and would draw from the global RNG, which
    # breaks exact resume; numpy's Beta is correct and, seeded from `gen`, stays on our stream.
    # The cost is one device sync per batch, which the mixers need anyway for their box sizes.
    return np.random.default_rng(torch.randint(2**62, (1,), generator=gen, device=device).item())


def box_mask(y0: torch.Tensor, x0: torch.Tensor, y1: torch.Tensor, x1: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 1, H, W) bool mask of the boxes [y0, y1) x [x0, x1), one per image, clipped to the image."""
    ys = torch.arange(h, device=y0.device)[None, :, None]
    xs = torch.arange(w, device=y0.device)[None, None, :]
    y0, x0, y1, x1 = (v[:, None, None] for v in (y0, x0, y1, x1))
    return ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))[:, None]


class Cutout:
    """Zero one size x size square per image: https://arxiv.org/abs/1708.04552"""

    def __init__(self, size: int, prob: float = 1.0, inside: bool = False) -> None:
        self.size, self.prob, self.inside = size, prob, inside

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        s = self.size
        if self.inside:  # the whole square lies in the image
            lo, hi_y, hi_x = 0, max(h - s, 0), max(w - s, 0)
        else:  # the reference's centre may be any pixel (or one past the edge for even sizes)
            lo, hi_y, hi_x = -(s // 2), h - (s + 1) // 2, w - (s + 1) // 2
        y0 = torch.randint(lo, hi_y + 1, (n,), generator=gen, device=x.device)
        x0 = torch.randint(lo, hi_x + 1, (n,), generator=gen, device=x.device)
        on = torch.rand(n, generator=gen, device=x.device) < self.prob
        # 0 is the dataset mean: the reference applies cutout after Normalize
        return x.masked_fill(box_mask(y0, x0, y0 + s, x0 + s, h, w) & on[:, None, None, None], 0.0)


class RandomErasing:
    """Fill one random rectangle per image with Gaussian noise: https://arxiv.org/abs/1708.04896"""

    def __init__(
        self, prob: float, area: Sequence[float] = (0.02, 0.4), ratio: Sequence[float] = (0.3, 3.3333)
    ) -> None:
        self.prob, self.area, self.ratio = prob, tuple(area), tuple(ratio)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = x.shape
        u = torch.rand(5, n, generator=gen, device=x.device)
        area = (self.area[0] + (self.area[1] - self.area[0]) * u[0]) * (h * w)
        ratio = self.ratio[0] + (self.ratio[1] - self.ratio[0]) * u[1]
        # clamping to the image replaces the paper's retry loop: one pass for the whole batch
        eh = (area * ratio).sqrt().round().clamp(1, h).long()
        ew = (area / ratio).sqrt().round().clamp(1, w).long()
        y0, x0 = (u[2] * (h - eh + 1)).long(), (u[3] * (w - ew + 1)).long()
        mask = box_mask(y0, x0, y0 + eh, x0 + ew, h, w) & (u[4] < self.prob)[:, None, None, None]
        # normal noise in normalised space = per-pixel random values in the image's own range
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return torch.where(mask, noise, x)


class BatchAugment:
    """Identity recipe with optional label smoothing: https://arxiv.org/abs/1512.00567"""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, erasers: Sequence[Eraser] = ()) -> None:
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.erasers = tuple(erasers)

    def targets(self, labels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Smoothed one-hot targets: (1 - eps) on the label, eps / K spread over all classes."""
        eps = self.label_smoothing
        t = torch.full((labels.numel(), self.num_classes), eps / self.num_classes, dtype=dtype, device=labels.device)
        return t.scatter_(1, labels[:, None], 1.0 - eps + eps / self.num_classes)

    def __call__(
        self, x: torch.Tensor, labels: torch.Tensor, gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the (possibly changed) batch and its soft targets (N x K, rows sum to 1)."""
        for erase in self.erasers:
            x = erase(x, gen)
        # mixers mix the smoothed targets, so label smoothing composes with every one of them
        return self.mix(x, self.targets(labels), gen)

    def mix(
        self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch mixer's step (none here)."""
        return x, targets

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy against soft targets."""
        return F.cross_entropy(logits.float(), targets)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits of the original images (a recipe that enlarges the batch overrides this)."""
        return logits

    def hard_labels(self, targets: torch.Tensor) -> torch.Tensor:
        """The dominant class of each soft target, for the training error."""
        return targets.argmax(1)


class Mixup(BatchAugment):
    """Blend each image with a partner, one lam per batch: https://arxiv.org/abs/1710.09412"""

    def __init__(self, num_classes: int, alpha: float, **kw) -> None:
        super().__init__(num_classes, **kw)
        self.alpha = alpha

    def sample(self, x: torch.Tensor, gen: torch.Generator | None) -> tuple[float, torch.Tensor]:
        """(lam, perm): the batch's lambda and each image's partner."""
        lam = float(host_rng(gen, x.device).beta(self.alpha, self.alpha))
        return lam, torch.randperm(len(x), generator=gen, device=x.device)

    def mix(self, x, targets, gen):
        lam, perm = self.sample(x, gen)
        return lam * x + (1 - lam) * x[perm], lam * targets + (1 - lam) * targets[perm]


class CutMix(BatchAugment):
    """Paste one box of a partner image into each image: https://arxiv.org/abs/1905.04899"""

    def __init__(self, num_classes: int, alpha: float, **kw) -> None:
        super().__init__(num_classes, **kw)
        self.alpha = alpha

    def sample(self, x: torch.Tensor, gen: torch.Generator | None) -> tuple[tuple[int, int, int, int], torch.Tensor]:
        """((y0, y1, x0, x1), perm): one box of area ~ (1 - lam) for the batch, clipped; partners."""
        h, w = x.shape[-2:]
        rng = host_rng(gen, x.device)
        cut = math.sqrt(1.0 - rng.beta(self.alpha, self.alpha))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        y0, y1 = round(max(cy - h * cut / 2, 0)), round(min(cy + h * cut / 2, h))
        x0, x1 = round(max(cx - w * cut / 2, 0)), round(min(cx + w * cut / 2, w))
        return (y0, y1, x0, x1), torch.randperm(len(x), generator=gen, device=x.device)

    def mix(self, x, targets, gen):
        (y0, y1, x0, x1), perm = self.sample(x, gen)
        out = x.clone()
        out[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        # the box was clipped at the border and rounded: weigh by the area actually pasted, not lam
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (x.shape[-2] * x.shape[-1])
        return out, lam * targets + (1 - lam) * targets[perm]


class Ricap(BatchAugment):
    """Tile four crops of four shuffled batches: https://arxiv.org/abs/1811.09030"""

    def __init__(self, num_classes: int, beta: float, **kw) -> None:
        super().__init__(num_classes, **kw)
        self.beta = beta

    def sample(self, x: torch.Tensor, gen: torch.Generator | None) -> list[tuple[torch.Tensor, int, int, int, int]]:
        """Four (perm, top, left, height, width) crops, tiling the image around a Beta boundary."""
        n, _, h, w = x.shape
        rng = host_rng(gen, x.device)
        w0, h0 = round(w * rng.beta(self.beta, self.beta)), round(h * rng.beta(self.beta, self.beta))
        crops = []
        for ch, cw in ((h0, w0), (h0, w - w0), (h - h0, w0), (h - h0, w - w0)):
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crops.append((torch.randperm(n, generator=gen, device=x.device), top, left, ch, cw))
        return crops

    def mix(self, x, targets, gen):
        crops = self.sample(x, gen)
        p = [x[perm, :, top : top + ch, left : left + cw] for perm, top, left, ch, cw in crops]
        out = torch.cat([torch.cat(p[:2], dim=3), torch.cat(p[2:], dim=3)], dim=2)
        # each source's label weighs as much as the area its crop covers; the four areas tile the image
        area = x.shape[-2] * x.shape[-1]
        return out, sum(ch * cw / area * targets[perm] for perm, _, _, ch, cw in crops)


class DualCutout(BatchAugment):
    """Two cutout views of each image and a consistency term: https://arxiv.org/abs/1802.07426"""

    def __init__(self, num_classes: int, alpha: float, cutout: Cutout, **kw) -> None:
        super().__init__(num_classes, **kw)
        self.alpha, self.cutout = alpha, cutout

    def mix(self, x, targets, gen):
        # two independent masks over the same images: the batch doubles, the targets stay N rows
        return torch.cat([self.cutout(x, gen), self.cutout(x, gen)]), targets

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of both views plus alpha * MSE between their logits."""
        y1, y2 = logits.float().chunk(2)
        ce = 0.5 * (F.cross_entropy(y1, targets) + F.cross_entropy(y2, targets))
        # on the logits, not the softmax: the reference's DualCutoutLoss (and its tables) do so
        return ce + self.alpha * F.mse_loss(y1, y2)

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean logits of the two views."""
        y1, y2 = logits.chunk(2)
        return (y1 + y2) / 2


def build(cfg: AugmentConfig, num_classes: int) -> BatchAugment:
    """The batch recipe a config asks for: erasing ops first, then at most one mixer."""
    on = [k for k in MIXERS if getattr(cfg, k) > 0]
    # validation already refuses this; a config built by hand must not have one mixer win silently
    if len(on) > 1:
        names = " and ".join(f"augment.{k}" for k in on)
        raise ValueError(f"{names} cannot be combined: use one batch mixer per run")
    if cfg.dual_cutout > 0 and cfg.cutout <= 0:
        raise ValueError("augment.dual_cutout needs augment.cutout > 0")
    cutout = Cutout(cfg.cutout, cfg.cutout_prob, cfg.cutout_inside) if cfg.cutout > 0 else None
    erasers: list[Eraser] = [cutout] if cutout and cfg.dual_cutout == 0 else []  # dual cuts twice itself
    if cfg.random_erasing > 0:
        erasers.append(RandomErasing(cfg.random_erasing, cfg.random_erasing_area, cfg.random_erasing_ratio))
    smooth = cfg.label_smoothing
    if cfg.mixup > 0:
        return Mixup(num_classes, cfg.mixup, label_smoothing=smooth, erasers=erasers)
    if cfg.cutmix > 0:
        return CutMix(num_classes, cfg.cutmix, label_smoothing=smooth, erasers=erasers)
    if cfg.ricap > 0:
        return Ricap(num_classes, cfg.ricap, label_smoothing=smooth, erasers=erasers)
    if cutout is not None and cfg.dual_cutout > 0:
        return DualCutout(num_classes, cfg.dual_cutout, cutout, label_smoothing=smooth, erasers=erasers)
    return BatchAugment(num_classes, label_smoothing=smooth, erasers=erasers)

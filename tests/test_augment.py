"""Batch augmentation: soft targets, exact geometry of every recipe, reproducibility from the generator."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from sweeplab.data import augment
from sweeplab.schema import MIXERS, AugmentConfig

N, C, H, W, K = 8, 3, 32, 32, 10

RECIPES = {
    "identity": {},
    "smoothing": {"label_smoothing": 0.1},
    "cutout": {"cutout": 8},
    "cutout_inside_half": {"cutout": 7, "cutout_inside": True, "cutout_prob": 0.5},
    "random_erasing": {"random_erasing": 0.5},
    "mixup": {"mixup": 1.0},
    "cutmix": {"cutmix": 1.0},
    "ricap": {"ricap": 0.3},
    "dual_cutout": {"dual_cutout": 0.1, "cutout": 8},
    "mixup_smooth_erase": {"mixup": 0.2, "label_smoothing": 0.1, "random_erasing": 0.5},
    "cutmix_smooth_cutout": {"cutmix": 1.0, "label_smoothing": 0.1, "cutout": 8},
    "ricap_smooth": {"ricap": 0.3, "label_smoothing": 0.1},
    "dual_cutout_smooth_erase": {"dual_cutout": 0.1, "cutout": 8, "label_smoothing": 0.1, "random_erasing": 1.0},
}
RANDOM = [k for k in RECIPES if k not in ("identity", "smoothing")]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make(**kw) -> augment.BatchAugment:
    return augment.build(AugmentConfig(**kw), K)


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = gen(1000 + seed)
    return torch.randn(N, C, H, W, generator=g), torch.randint(K, (N,), generator=g)


@pytest.mark.parametrize("name", RECIPES)
def test_contract_and_soft_targets(name):
    aug = make(**RECIPES[name])
    x, labels = batch()
    out, t = aug(x, labels, gen())
    assert t.dtype == torch.float32 and t.shape == (N, K)
    assert (t >= 0).all() and torch.allclose(t.sum(1), torch.ones(N))
    assert out.shape[1:] == x.shape[1:] and out.dtype == x.dtype
    # the engine's step: a tiny model, a scalar loss that backpropagates, N predictions
    model = torch.nn.Linear(C * H * W, K)
    logits = model(out.flatten(1))
    loss = aug.loss(logits, t)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    pred = aug.predictions(logits)
    assert pred.shape == (N, K) and aug.hard_labels(t).shape == (N,)


def test_label_smoothing_values():
    eps = 0.1
    labels = torch.tensor([0, 3, 9, 3])
    _, t = make(label_smoothing=eps)(torch.zeros(4, C, H, W), labels, gen())
    expect = torch.full((4, K), eps / K)
    expect[torch.arange(4), labels] = 1 - eps + eps / K
    torch.testing.assert_close(t, expect)


def zero_boxes(out: torch.Tensor) -> list[tuple[int, int, int]]:
    """Per image: (zeroed pixels, bounding-box height, bounding-box width) of an all-ones batch."""
    res = []
    for img in out:
        z = (img == 0).all(0)
        assert ((img == 0).any(0) == z).all()  # the same pixels in every channel
        ys, xs = z.nonzero(as_tuple=True)
        if len(ys) == 0:
            res.append((0, 0, 0))
            continue
        bh, bw = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        res.append((int(z.sum()), bh, bw))
    return res


@pytest.mark.parametrize("size", [8, 5, 16])
def test_cutout_inside_blanks_exact_square(size):
    x = torch.ones(64, C, H, W)
    out, _ = make(cutout=size, cutout_inside=True)(x, torch.zeros(64, dtype=torch.long), gen())
    for count, bh, bw in zero_boxes(out):
        # exactly size^2 zeros, and their bounding box is size x size: one contiguous square
        assert (count, bh, bw) == (size * size, size, size)
    assert (x == 1).all()  # the input batch is left alone


def test_cutout_outside_is_clipped_square_and_prob():
    out, _ = make(cutout=16)(torch.ones(256, C, H, W), torch.zeros(256, dtype=torch.long), gen())
    boxes = zero_boxes(out)
    assert all(c == bh * bw and 8 <= bh <= 16 and 8 <= bw <= 16 for c, bh, bw in boxes)
    assert any(c < 256 for c, _, _ in boxes)  # some squares hang over the border
    out, _ = make(cutout=8, cutout_prob=0.0)(torch.ones(N, C, H, W), torch.zeros(N, dtype=torch.long), gen())
    assert (out == 1).all()


def test_random_erasing_prob_one_and_zero():
    x, labels = batch()
    out, _ = make(random_erasing=1.0)(x, labels, gen())
    changed = (out != x).any(1)
    assert changed.flatten(1).any(1).all()
    for z in changed:  # one rectangle per image
        ys, xs = z.nonzero(as_tuple=True)
        assert int(z.sum()) == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    out, _ = make(random_erasing=0.0)(x, labels, gen())
    assert torch.equal(out, x)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_mixup_is_the_convex_mix(eps):
    aug = make(mixup=0.4, label_smoothing=eps)
    x, labels = batch()
    lam, perm = aug.sample(x, gen(3))
    out, t = aug(x, labels, gen(3))
    torch.testing.assert_close(out, lam * x + (1 - lam) * x[perm])
    s = aug.targets(labels)
    torch.testing.assert_close(t, lam * s + (1 - lam) * s[perm])


def source_encoded(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i and labelled i, so a pixel names its source image."""
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, C, H, W).clone()
    return x, torch.arange(n)


def assert_targets_are_pixel_shares(out: torch.Tensor, t: torch.Tensor) -> None:
    """Each image's target weight on class c equals the fraction of its pixels that came from image c."""
    n = len(out)
    for j in range(n):
        share = torch.bincount(out[j, 0].flatten().long(), minlength=n).float() / (H * W)
        torch.testing.assert_close(t[j], share)


@pytest.mark.parametrize("seed", range(12))
def test_cutmix_weight_is_pasted_fraction(seed):
    aug = augment.build(AugmentConfig(cutmix=1.0), 16)
    x, labels = source_encoded()
    (y0, y1, x0, x1), perm = aug.sample(x, gen(seed))
    out, t = aug(x, labels, gen(seed))
    assert_targets_are_pixel_shares(out, t)
    torch.testing.assert_close(out[:, :, y0:y1, x0:x1], x[perm, :, y0:y1, x0:x1])


@pytest.mark.parametrize("seed", range(12))
def test_ricap_tiles_four_crops_weighted_by_area(seed):
    aug = make(ricap=0.3)
    x, labels = batch(seed)
    crops = aug.sample(x, gen(seed))
    out, t = aug(x, labels, gen(seed))
    h0, w0 = crops[0][3], crops[0][4]
    corners = [(0, 0), (0, w0), (h0, 0), (h0, w0)]
    assert sum(ch * cw for *_, ch, cw in crops) == H * W
    weights = [ch * cw / (H * W) for *_, ch, cw in crops]
    assert sum(weights) == pytest.approx(1.0)
    s = aug.targets(labels)
    torch.testing.assert_close(t, sum(wk * s[perm] for wk, (perm, *_) in zip(weights, crops)))
    for (oy, ox), (perm, top, left, ch, cw) in zip(corners, crops):
        src = x[perm, :, top : top + ch, left : left + cw]
        torch.testing.assert_close(out[:, :, oy : oy + ch, ox : ox + cw], src)
    # independent of the plan: every pixel's source image gets exactly its share of the target
    enc, enc_labels = source_encoded()
    out, t = augment.build(AugmentConfig(ricap=0.3), 16)(enc, enc_labels, gen(seed))
    assert_targets_are_pixel_shares(out, t)


def test_dual_cutout_doubles_batch_and_adds_consistency():
    aug = make(dual_cutout=0.5, cutout=8, cutout_inside=True)
    x, labels = batch()
    out, t = aug(x, labels, gen())
    assert out.shape == (2 * N, C, H, W) and t.shape == (N, K)
    a, b = out.chunk(2)
    assert not torch.equal(a, b)  # two independent masks
    for view in (a, b):  # each view is the batch with its own 8 x 8 cutout
        assert ((view != x).all(1).flatten(1).sum(1) == 64).all()
    logits = torch.randn(2 * N, K, generator=gen(1))
    y1, y2 = logits.chunk(2)
    ce = 0.5 * (F.cross_entropy(y1, t) + F.cross_entropy(y2, t))
    loss = aug.loss(logits, t)
    assert torch.isfinite(loss) and loss > ce
    torch.testing.assert_close(loss, ce + 0.5 * F.mse_loss(y1, y2))
    torch.testing.assert_close(aug.loss(torch.cat([y1, y1]), t), F.cross_entropy(y1, t))
    torch.testing.assert_close(aug.predictions(logits), (y1 + y2) / 2)


@pytest.mark.parametrize("name", RANDOM)
def test_same_seed_same_batch_other_seed_differs(name):
    aug = make(**RECIPES[name])
    x, labels = batch()
    o1, t1 = aug(x, labels, gen(7))
    o2, t2 = aug(x, labels, gen(7))
    assert torch.equal(o1, o2) and torch.equal(t1, t2)
    o3, _ = aug(x, labels, gen(8))
    assert not torch.equal(o1, o3)


@pytest.mark.parametrize("pair", list(itertools.combinations(MIXERS, 2)))
def test_two_mixers_refused_naming_both(pair):
    with pytest.raises(ValueError) as e:
        make(cutout=8, **{k: 0.5 for k in pair})
    assert all(f"augment.{k}" in str(e.value) for k in pair)


def test_dual_cutout_without_cutout_refused():
    with pytest.raises(ValueError, match="augment.cutout"):
        make(dual_cutout=0.1)

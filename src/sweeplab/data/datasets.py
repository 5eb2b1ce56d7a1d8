"""Datasets as whole uint8 tensors (N, C, H, W) plus int64 labels: loaded once, kept on the device.

MNIST-style sets are read straight from their IDX files (torchvision's raw layout, or an offline
copy such as Debian's `dataset-fashion-mnist`); CIFAR comes through torchvision.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sweeplab.core.errors import ConfigError
from sweeplab.schema import DataConfig


class DatasetError(ConfigError):
    """A dataset that is missing and cannot be downloaded; the message says where we looked (bad input: exit 2)."""


@dataclass
class Dataset:
    train_x: torch.Tensor  # uint8 (N, C, H, W)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, in [0, 1] units
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)


# torchvision folder name, offline copies, and normalisation statistics of each IDX set.
_IDX_SETS = {
    "mnist": ("MNIST", [], (0.1307,), (0.3081,)),
    "fashion_mnist": ("FashionMNIST", ["/usr/share/datasets/fashion-mnist"], (0.2860,), (0.3530,)),
    "kmnist": ("KMNIST", [], (0.1918,), (0.3483,)),
}
_CIFAR = {
    "cifar10": ("CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load(cfg: DataConfig) -> Dataset:
    """Load the dataset `cfg.name` on the CPU (cached per process: a reused Tune actor reads it once)."""
    return _load(
        cfg.name,
        cfg.root,
        cfg.download,
        tuple(cfg.synthetic_shape),
        cfg.synthetic_classes,
        cfg.synthetic_train,
        cfg.synthetic_test,
    )


@functools.lru_cache(maxsize=2)
def _load(
    name: str, root_dir: str, download: bool, shape: tuple[int, ...], classes: int, n_train: int, n_test: int
) -> Dataset:
    # The tensors are shared by every caller: the loader and `subset` only ever index them (copies).
    cfg = DataConfig(
        name=name,
        root=root_dir,
        download=download,
        synthetic_shape=list(shape),
        synthetic_classes=classes,
        synthetic_train=n_train,
        synthetic_test=n_test,
    )
    if cfg.name == "synthetic":
        return synthetic(cfg.synthetic_shape, cfg.synthetic_classes, cfg.synthetic_train, cfg.synthetic_test)
    root = Path(cfg.root).expanduser()
    if cfg.name in _IDX_SETS:
        return _load_idx(cfg.name, root, cfg.download)
    return _load_cifar(cfg.name, root, cfg.download)


def synthetic(shape: list[int], num_classes: int, n_train: int, n_test: int, seed: int = 1234) -> Dataset:
    """Learnable random images: a fixed random prototype per class plus heavy noise."""
    g = torch.Generator().manual_seed(seed)
    # Low-frequency prototypes (a 4x4 pattern upsampled) survive random crops and small models.
    coarse = torch.rand((num_classes, shape[0], 4, 4), generator=g)
    protos = torch.nn.functional.interpolate(coarse, size=tuple(shape[1:]), mode="bilinear") * 255

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        x = 0.5 * protos[y] + 0.5 * torch.rand((n, *shape), generator=g) * 255
        return x.to(torch.uint8), y

    (xtr, ytr), (xte, yte) = draw(n_train), draw(n_test)
    c = shape[0]
    return Dataset(xtr, ytr, xte, yte, num_classes, (0.5,) * c, (0.25,) * c)


def _find_idx(folder: str, offline: list[str], root: Path) -> Path | None:
    for d in [root / folder / "raw", root / folder, *map(Path, offline)]:
        if all((d / f).exists() or (d / f"{f}.gz").exists() for f in _IDX_FILES):
            return d
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not): magic, dims, then big-endian uint8 data."""
    gz = path.with_name(path.name + ".gz")
    raw = path.read_bytes() if path.exists() else gzip.decompress(gz.read_bytes())
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _load_idx(name: str, root: Path, download: bool) -> Dataset:
    folder, offline, mean, std = _IDX_SETS[name]
    where = _find_idx(folder, offline, root)
    if where is None and download:
        _download(name, folder, root)
        where = _find_idx(folder, offline, root)
    if where is None:
        looked = [str(root / folder / "raw"), *offline]
        hint = " (Debian: apt-get install dataset-fashion-mnist)" if name == "fashion_mnist" else ""
        raise DatasetError(f"dataset '{name}' not found; looked in {', '.join(looked)}{hint}")
    xtr, ytr, xte, yte = (torch.from_numpy(_read_idx(where / f).copy()) for f in _IDX_FILES)
    return Dataset(xtr[:, None], ytr.long(), xte[:, None], yte.long(), 10, mean, std)


def _load_cifar(name: str, root: Path, download: bool) -> Dataset:
    import torchvision

    folder, classes, mean, std = _CIFAR[name]
    cls = getattr(torchvision.datasets, folder)
    try:
        train, test = (cls(str(root), train=t, download=download) for t in (True, False))
    except Exception as e:  # torchvision raises RuntimeError or URLError depending on what failed
        raise DatasetError(
            f"dataset '{name}' not found in {root} and could not be downloaded: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None

    def to_tensor(ds) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    (xtr, ytr), (xte, yte) = to_tensor(train), to_tensor(test)
    return Dataset(xtr, ytr, xte, yte, classes, mean, std)


def _download(name: str, folder: str, root: Path) -> None:
    import torchvision

    cls = getattr(torchvision.datasets, folder)
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception:  # offline: fall through to the "not found" error that names where we looked
        pass

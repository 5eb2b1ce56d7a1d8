"""A loader that keeps the whole uint8 dataset on the training device and augments whole batches.

No DataLoader workers: indexing a device tensor and cropping by gather is cheaper than decoding
and collating single images in other processes (airbench's approach: https://arxiv.org/abs/2404.00498).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F


class DeviceLoader:
    """Seeded shuffling, random crop with zero padding, horizontal flip and normalisation."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device,
        train: bool,
        seed: int = 0,
        random_crop: bool = False,
        crop_padding: int = 4,
        hflip: bool = False,
        normalize: bool = True,
        channels_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.train, self.seed, self.batch_size = train, seed, batch_size
        self.rank, self.world = rank, world  # DDP: each rank takes its stride of the shared permutation
        self.hflip, self.channels_last = hflip, channels_last
        self.pad = crop_padding if (train and random_crop) else 0
        self.height, self.width = images.shape[2], images.shape[3]
        # Pad once here rather than per batch: uint8 is 4x cheaper to store and to gather than fp32.
        self.images = F.pad(images, [self.pad] * 4).to(device) if self.pad else images.to(device)
        self.labels = labels.to(device)
        mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1) if normalize else torch.zeros(1, device=device)
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1) if normalize else torch.ones(1, device=device)
        # (x / 255 - mean) / std folded into one multiply-add on the raw bytes.
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t
        self.device = device

    def __len__(self) -> int:
        # Training: equal shards (the remainder is dropped); evaluation: every example exactly once.
        n = self.labels.numel() // self.world if self.train else len(range(self.rank, self.labels.numel(), self.world))
        # Training drops the ragged last batch: static shapes, and no BatchNorm over a handful of images.
        return n // self.batch_size if (self.train and n >= self.batch_size) else -(-n // self.batch_size)

    @property
    def num_examples(self) -> int:
        return self.labels.numel()

    def generator(self, epoch: int, rank: int | None = None) -> torch.Generator:
        """The epoch's RNG: a pure function of (seed, epoch, rank), so a resumed run draws the same numbers."""
        rank = self.rank if rank is None else rank
        return torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + epoch + 7_919 * rank)

    def epoch(self, epoch: int = 0, gen: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images float NCHW normalised, labels int64) batches for one pass."""
        n = self.labels.numel()
        if self.train:
            gen = gen or self.generator(epoch)
            # Every rank draws rank 0's permutation, reshuffled each epoch (the DistributedSampler
            # with set_epoch), and keeps every world-th index; crops and flips use its own stream.
            shared = gen if self.rank == 0 else self.generator(epoch, rank=0)
            order = torch.randperm(n, generator=shared, device=self.device)
            order = order[: n // self.world * self.world][self.rank :: self.world]
        else:
            order = torch.arange(self.rank, n, self.world, device=self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.images[idx]
            if self.train:
                x = self.augment(x, gen)
            yield self.to_float(x), self.labels[idx]

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop and flip on the uint8 batch, each image with its own offset and coin."""
        b = x.shape[0]
        if self.pad:
            offsets = torch.randint(0, 2 * self.pad + 1, (2, b), generator=gen, device=self.device)
            rows = offsets[0][:, None] + torch.arange(self.height, device=self.device)
            cols = offsets[1][:, None] + torch.arange(self.width, device=self.device)
            # Two gathers (rows, then columns) move H*W and then H*W bytes per channel: cheaper
            # than one 4-index advanced-indexing gather, which materialises broadcast index tensors.
            x = x.gather(2, rows[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))
            x = x.gather(3, cols[:, None, None, :].expand(-1, x.shape[1], self.height, -1))
        if self.hflip:
            flip = torch.rand(b, generator=gen, device=self.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.shift, x.float(), self.scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

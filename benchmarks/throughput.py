"""Training images/s: sweeplab's engine against a plain PyTorch loop, side by side in one process.

The plain loop is what a tutorial writes: a float TensorDataset, a shuffling DataLoader, no
augmentation, `model(x)`, `loss.backward()`, `opt.step()`. The engine runs the same model, batch
size and data with its augmentation on (random crop + flip) and the switches given as overrides.
Both are timed over whole passes after a warm-up pass; the rounds alternate so drift hits both.

    python benchmarks/throughput.py                                  # defaults: FMNIST, preact-20
    python benchmarks/throughput.py train.channels_last=true --rounds 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from sweeplab import config, engine, models
from sweeplab.data import datasets
from sweeplab.schema import Config

BASE = "configs/fashion_mnist/resnet_preact20.yaml"


def plain_loop_images_per_s(
    conf: Config,
    data: datasets.Dataset,
    n: int,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
) -> float:
    """One timed pass of the textbook loop over the first n training images: batches come from a CPU
    DataLoader and are copied to `device` one by one; `precision` bf16 wraps the forward in autocast."""
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    x = (data.train_x[:n].float() / 255 - mean) / std
    loader = DataLoader(
        TensorDataset(x, data.train_y[:n]), batch_size=conf.data.batch_size, shuffle=True, drop_last=True
    )
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = models.build(conf.model.name, data.num_classes, data.shape[0], **conf.model.options)
    model = model.to(device, memory_format=fmt)
    opt = torch.optim.SGD(
        model.parameters(), lr=conf.optim.lr, momentum=0.9, nesterov=True, weight_decay=conf.optim.weight_decay
    )
    model.train()
    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def one_pass() -> float:
        sync()
        seen, start = 0, time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(dev, memory_format=fmt), yb.to(dev)
            with engine.autocast(dev, precision):
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(yb)
        sync()
        return seen / (time.perf_counter() - start)

    one_pass()  # warm-up: allocator, oneDNN / cuDNN kernel selection
    return one_pass()


def engine_images_per_s(conf: Config, data: datasets.Dataset, passes: int = 1) -> tuple[float, float]:
    """(images/s of the timed passes (their median), seconds of the warm-up pass, which includes any
    compilation)."""
    trainer = engine.Trainer(conf, data)
    start = time.perf_counter()
    trainer.train_epoch()
    warmup = time.perf_counter() - start
    rates = []
    for _ in range(passes):
        trainer.epoch += 1
        rates.append(trainer.train_epoch()["time/images_per_s"])
    return statistics.median(rates), warmup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="engine config overrides, e.g. train.channels_last=true")
    ap.add_argument("--config", default=BASE)
    ap.add_argument("--images", type=int, default=5120, help="training images per timed pass")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    conf = config.load(
        args.config, [f"data.train_subset={args.images}", f"train.threads={args.threads}", *args.overrides]
    )
    data = datasets.load(conf.data)
    data = engine.subset(data, args.images, 0, conf.train.seed)
    ours, plain, warm = [], [], []
    for r in range(args.rounds):
        e, w = engine_images_per_s(conf, data)
        p = plain_loop_images_per_s(conf, data, args.images)
        ours.append(e), plain.append(p), warm.append(w)
        print(f"round {r + 1}: engine {e:8.1f} img/s   plain loop {p:8.1f} img/s   ratio {e / p:.2f}", flush=True)
    e, p = statistics.median(ours), statistics.median(plain)
    print(
        f"\n{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
        f"{conf.data.name} {conf.model.name} depth {conf.model.options.get('depth')}, batch {conf.data.batch_size}, "
        f"overrides {args.overrides or 'none'}"
    )
    print(
        f"median engine {e:.1f} img/s (augment: crop+flip) | plain loop {p:.1f} img/s | ratio {e / p:.2f} "
        f"| engine warm-up pass {statistics.median(warm):.1f} s"
    )


if __name__ == "__main__":
    main()

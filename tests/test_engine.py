"""The engine and `sweeplab train`: learning, exact resume, the loader's augmentation, DDP sharding."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sweeplab import config, engine
from sweeplab.cli import main
from sweeplab.data.loader import DeviceLoader
from sweeplab.schema import Config

CONFIG = str(Path(__file__).parents[1] / "configs/fashion_mnist/resnet_preact20.yaml")
TINY = [
    "data.name=synthetic",
    "data.synthetic_shape=[1,12,12]",
    "data.synthetic_classes=4",
    "data.synthetic_train=256",
    "data.synthetic_test=64",
    "data.batch_size=32",
    "model.name=resnet_preact",
    "model.depth=8",
    "model.initial_channels=4",
    "augment.random_crop=true",
    "augment.hflip=true",
    "optim.lr=0.2",
    "train.threads=1",
]


def tiny(*extra: str) -> Config:
    return config.load(None, TINY + list(extra))


def test_synthetic_run_lowers_the_loss():
    history: list[dict[str, float]] = []
    engine.fit(tiny("train.epochs=4"), lambda m, _: history.append(m))
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]
    assert history[-1]["train/loss"] < 0.8 * history[0]["train/loss"]
    assert set(history[-1]) >= {
        "epoch",
        "lr",
        "train/loss",
        "train/error",
        "val/loss",
        "val/error",
        "time/epoch_s",
        "time/images_per_s",
    }
    assert 0.0 <= history[-1]["val/error"] <= 100.0


def _weights(folder) -> dict[str, torch.Tensor]:
    return torch.load(folder / "checkpoint.pt", weights_only=True)["model"]


def test_resume_is_bit_exact(tmp_path, capsys):
    # Mixup draws from the epoch generator: its numbers must resume too.
    args = [CONFIG, *TINY, "augment.mixup=1.0"]
    assert main(["train", *args, "train.epochs=2", "--output", str(tmp_path / "straight"), "--no-mlflow"]) == 0
    assert (
        main(
            ["train", *args, "train.epochs=2", "--output", str(tmp_path / "split"), "--stop-after", "1", "--no-mlflow"]
        )
        == 0
    )
    assert [json.loads(x)["epoch"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()] == [1]
    assert main(["train", *args, "train.epochs=2", "--output", str(tmp_path / "split"), "--resume", "--no-mlflow"]) == 0
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    assert lines[-1]["train/loss"] == straight[-1]["train/loss"]
    assert lines[-1]["val/error"] == straight[-1]["val/error"]


def test_train_refuses_to_overwrite_and_to_resume_a_changed_config(tmp_path, capsys):
    out = ["--output", str(tmp_path / "run")]
    assert main(["train", CONFIG, *TINY, "train.epochs=1", *out, "--no-mlflow"]) == 0
    assert main(["train", CONFIG, *TINY, "train.epochs=1", *out, "--no-mlflow"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", CONFIG, *TINY, "optim.lr=0.3", "train.epochs=2", *out, "--resume", "--no-mlflow"]) == 2
    assert "optim.lr" in capsys.readouterr().err


def _loader(**kw) -> DeviceLoader:
    images = torch.arange(8 * 1 * 6 * 6, dtype=torch.uint8).view(8, 1, 6, 6) % 200 + 1  # no zeros
    return DeviceLoader(
        images, torch.arange(8), 4, mean=(0.0,), std=(1.0,), device=torch.device("cpu"), normalize=False, **kw
    )


def raw(img: torch.Tensor) -> torch.Tensor:
    """Undo the loader's scaling to [0, 1] (normalize=False) back to the source bytes."""
    return (img * 255).round().to(torch.uint8)


def test_loader_crop_stays_inside_the_padded_image():
    loader = _loader(train=True, random_crop=True, crop_padding=2)
    padded = loader.images  # (8, 1, 10, 10) with a zero border of 2
    seen_shift = False
    for epoch in range(5):
        for x, y in loader.epoch(epoch):
            assert x.shape == (4, 1, 6, 6)
            for img, label in zip(x, y):
                # the crop equals some 6x6 window of the padded source image: it never reads outside it
                windows = padded[label].unfold(1, 6, 1).unfold(2, 6, 1)  # (1, 5, 5, 6, 6)
                hits = (windows == raw(img)[:, None, None]).flatten(3).all(-1)
                assert hits.any()
                seen_shift |= not bool(hits[0, 2, 2])
    assert seen_shift  # some crops are off-centre


def test_loader_flip_mirrors_about_half_the_images():
    loader = _loader(train=True, hflip=True)
    flips = 0
    for epoch in range(25):
        for x, y in loader.epoch(epoch):
            for img, label in zip(x, y):
                src = loader.images[label]
                assert torch.equal(raw(img), src) or torch.equal(raw(img), src.flip(2))
                flips += int(torch.equal(raw(img), src.flip(2)))
    assert 0.3 < flips / (25 * 8) < 0.7


def test_loader_epochs_are_seeded_permutations():
    loader = _loader(train=True, seed=3)
    first = torch.cat([y for _, y in loader.epoch(0)])
    assert sorted(first.tolist()) == list(range(8))
    assert torch.equal(first, torch.cat([y for _, y in loader.epoch(0)]))
    assert any(not torch.equal(first, torch.cat([y for _, y in loader.epoch(e)])) for e in range(1, 5))


def test_loader_shards_are_disjoint_and_cover_the_epoch():
    shards = [torch.cat([y for _, y in _loader(train=True, seed=1, rank=r, world=2).epoch(3)]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 4
    assert sorted(torch.cat(shards).tolist()) == list(range(8))


def _ddp_worker(rank: int, port: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:

        def on_epoch(metrics, state):
            torch.save({"metrics": metrics, "model": state()["model"]}, f"{folder}/rank{rank}.pt")

        engine.fit(tiny("train.epochs=1", "augment.mixup=1.0"), on_epoch)
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_hold_identical_weights_and_agree_on_metrics(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    assert r0["metrics"]["train/loss"] == r1["metrics"]["train/loss"]
    # the ranks score disjoint halves of the test set; together they equal one process scoring all of it
    single = engine.Trainer(tiny("train.epochs=1", "augment.mixup=1.0"))
    single.model.load_state_dict(r0["model"])
    alone = single.evaluate()
    assert r0["metrics"]["val/error"] == r1["metrics"]["val/error"] == alone["val/error"]
    assert r0["metrics"]["val/loss"] == pytest.approx(alone["val/loss"], rel=1e-5)


def test_resume_survives_a_torn_metrics_line(tmp_path):
    out = tmp_path / "run"
    args = ["train", CONFIG, *TINY, "train.epochs=2", "--output", str(out), "--no-mlflow"]
    assert main([*args, "--stop-after", "1"]) == 0
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "train/lo')  # killed mid-append
    assert main([*args, "--resume"]) == 0
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_channels_last_default_trains_a_tiny_model_without_crashing(tmp_path):
    # On an AVX2-only CPU, torch's oneDNN NHWC conv backward corrupted the heap for a strided 1x1 conv
    # with 4 input channels (the tests' tiny ResNet); the engine keeps such CPUs NCHW (nhwc_is_safe).
    import subprocess
    import sys

    config = Path(__file__).parents[1] / "configs/fashion_mnist/resnet_preact20.yaml"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "sweeplab.cli",
            "train",
            str(config),
            "data.name=synthetic",
            "data.synthetic_shape=[1,8,8]",
            "data.synthetic_train=256",
            "data.synthetic_test=64",
            "data.batch_size=64",
            "data.device=cpu",
            "model.depth=8",
            "model.initial_channels=4",
            "train.threads=1",
            "train.epochs=2",
            "train.channels_last=true",
            "--output",
            str(tmp_path / "run"),
            "--no-mlflow",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()

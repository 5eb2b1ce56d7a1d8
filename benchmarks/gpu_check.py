"""The GPU check of issue 7: one command, one JSON file, the rows for BENCHMARKS.md.

On a machine with one NVIDIA GPU it measures, inside an overall deadline (8 minutes):

  env            the card (torch.cuda.get_device_name), torch, CUDA, cuDNN, Python and Ray versions
  matmul         the card's bf16 matrix-product rate (8192^3 on random data, timed with CUDA events):
                 the ceiling the WRN row is measured against
  throughput     ResNet-preact-20 training images/s on CIFAR-shaped data: the plain PyTorch loop of
                 throughput.py (fp32; bf16 + channels_last) against the engine (fp32; bf16 +
                 channels_last; the same compiled, default mode then reduce-overhead)
  wrn            WRN-28-10 training images/s (bf16 + channels_last), its training FLOPs per image
                 counted by torch.utils.flop_counter, and images/s x FLOPs as a fraction of `matmul`
  packing        1, 2 and 4 trials at once on the one GPU (gpus_per_worker 1, 0.5, 0.25) through a real
                 local Ray and sweeplab's own runner (cluster.start, runner.launch.session on Tune, grid search):
                 aggregate training images/s against one trial alone
  fashion_mnist  the 200-epoch ResNet-preact-20 Fashion-MNIST row (test error, wall time) if the data
                 is there (--fashion-mnist DIR) and the first epoch says the rest fits in the time left

`--cpu` runs the same stages tiny on the CPU (fp32 rate instead of bf16, small images and models,
1 and 2 trials packed on fractional CPUs), so that tests/test_gpu_check.py keeps the plumbing alive.

Each stage runs in its own process with its own time limit: a crash, a hang or a sticky CUDA error
in one keeps the others' results. The JSON has every stage, each with its status (ok, partial,
skipped, error, timeout), its rows and its reason where it has no result.

    python benchmarks/gpu_check.py --out gpu_check.json                # on the GPU machine
    python benchmarks/gpu_check.py --cpu --out /tmp/gpu_check.json     # the same plumbing, tiny
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# sweeplab from this checkout where it is not installed (the GPU machine), and PYTHONPATH made absolute:
# Ray's trial workers inherit it but start in their trial's folder, where `src` would point nowhere.
if importlib.util.find_spec("sweeplab") is None:
    sys.path.insert(0, str(ROOT / "src"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
os.environ["PYTHONPATH"] = os.pathsep.join(
    os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p
)
STAGES = ("env", "matmul", "throughput", "wrn", "packing", "fashion_mnist")
FMNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"

# Sizes and time limits per mode. A stage's `budget` is its process's time limit (seconds); `need`
# is what it must have left to start at all. On the GPU, env and matmul take ~10 s each, so packing
# (one of issue 7's three goals) keeps >= 150 s even when throughput and wrn use all of theirs;
# fashion_mnist gets what is left and runs only if its first epoch says the rest fits.
PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {
        "deadline": 480,
        "budget": {"env": 30, "matmul": 30, "throughput": 180, "wrn": 100, "packing": 130, "fashion_mnist": 480},
        "need": {"env": 5, "matmul": 10, "throughput": 40, "wrn": 30, "packing": 60, "fashion_mnist": 60},
        "matmul": {"n": 8192, "warmup": 3, "reps": 10},
        "images": 25_600,  # CIFAR-shaped training images per timed pass
        "shape": [3, 32, 32],
        "passes": 2,
        "batch": 128,  # configs/cifar10/resnet_preact20.yaml as it is
        "model": {"depth": 20},
        "compile_s": {"throughput": 60, "wrn": 60},  # what a compiled row needs left to start (inductor, 16 cores)
        "wrn": {"depth": 28, "widening_factor": 10, "images": 6_400},
        "packing": {"per_device": [1, 2, 4], "images": 20_480, "epochs": 6},
        "fmnist": {"overrides": ["train.precision=bf16"]},  # 200 epochs, the recipe's batch and lr
    },
    "cpu": {
        # limits for a hang, not targets: ~1-2 min in all on 2 idle cores, several times that on a busy box
        "deadline": 900,
        "budget": {"env": 60, "matmul": 60, "throughput": 180, "wrn": 120, "packing": 300, "fashion_mnist": 120},
        "need": {"env": 5, "matmul": 5, "throughput": 10, "wrn": 10, "packing": 30, "fashion_mnist": 10},
        "matmul": {"n": 512, "warmup": 2, "reps": 5},
        "images": 256,
        "shape": [3, 16, 16],
        "passes": 1,
        "batch": 64,
        "model": {"depth": 8, "initial_channels": 4},
        "compile_s": None,  # compiled rows are left out: ~20 s of compilation per model on 2 cores
        "wrn": {"depth": 10, "widening_factor": 1, "images": 256},
        "packing": {"per_device": [1, 2], "images": 512, "epochs": 4},
        "fmnist": {
            "overrides": [
                "train.epochs=2",
                "data.train_subset=256",
                "data.test_subset=256",
                "model.depth=8",
                "model.initial_channels=4",
                "data.device=cpu",
            ]
        },
    },
}


# ---- the driver: runs each stage in a child process, keeps the JSON ----------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="the same stages, tiny, on the CPU")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--deadline", type=float, help="overall seconds (default: 480 on GPU, 900 with --cpu)")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--fashion-mnist", default=FMNIST_DEFAULT, help="folder with the four Fashion-MNIST IDX files")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # child: run one stage
    ap.add_argument("--part", type=Path, help=argparse.SUPPRESS)  # child: where it writes its result
    ap.add_argument("--until", type=float, help=argparse.SUPPRESS)  # child: its end, as time.time()
    args = ap.parse_args()
    mode = "cpu" if args.cpu else "gpu"
    if args.stage:
        return child(args.stage, mode, args)
    prof = PROFILES[mode]
    deadline = args.deadline or prof["deadline"]
    t0 = time.monotonic()
    report: dict[str, Any] = {
        "mode": mode,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "deadline_s": deadline,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "stages": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in STAGES:
        left = deadline - (time.monotonic() - t0)
        if name not in args.stages:
            res: dict[str, Any] = {"status": "skipped", "reason": "not asked for (--stages)"}
        elif left < prof["need"][name]:
            res = {"status": "skipped", "reason": f"out of time: {left:.0f} s of the {deadline:.0f} s deadline left"}
        else:
            res = run_stage(name, mode, args, min(prof["budget"][name], left), report)
        report["stages"][name] = res
        report["elapsed_s"] = round(time.monotonic() - t0, 1)
        write_json(args.out, report)
        print(f"[{report['elapsed_s']:6.1f} s] {name}: {res['status']} {res.get('reason', '')}", flush=True)
        if name == "env" and mode == "gpu" and not res.get("cuda_available"):
            for rest in STAGES[1:]:
                report["stages"][rest] = {"status": "skipped", "reason": "no CUDA device (use --cpu off a GPU)"}
            break
    write_json(args.out, report)
    print()
    try:
        print("\n".join(rows(report)))
    except Exception:  # the JSON is written: a bug in the rows must not hide it behind a failure
        traceback.print_exc()
    print(f"\nwrote {args.out} ({report['elapsed_s']:.0f} s)")


def run_stage(name: str, mode: str, args: argparse.Namespace, limit: float, report: dict[str, Any]) -> dict:
    """Run one stage in a child process (its own session, so a timeout ends Ray's daemons with it)."""
    with tempfile.TemporaryDirectory(prefix=f"gpu_check_{name}_") as tmp:
        part = Path(tmp) / "part.json"
        write_json(part, {"status": "error", "reason": "the stage wrote nothing", "so_far": report["stages"]})
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--part", str(part)]
        until, started = time.time() + limit, time.monotonic()
        cmd += ["--until", str(until), "--fashion-mnist", args.fashion_mnist] + (["--cpu"] if mode == "cpu" else [])
        log = Path(tmp) / "log"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                rc = None
            finally:  # the stage's process group: Ray's workers and daemons, compile workers
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        res = json.loads(part.read_text())
        res.pop("so_far", None)
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        if rc is None:
            res["status"] = "timeout"
            res["reason"] = f"stopped at its {limit:.0f} s limit; rows so far kept"
        elif rc != 0 and res.get("status") not in ("error", "skipped"):
            res["status"], res["reason"] = "error", f"exit code {rc}"
        if res["status"] in ("error", "timeout"):
            res["log_tail"] = tail
        res["stage_s"] = round(time.monotonic() - started, 1)  # the process's start (imports) included
        return res


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


# ---- the child: one stage ----------------------------------------------------------------------------


class Stage:
    """A stage's result as it grows, saved after every row so that a timeout keeps what was done."""

    def __init__(self, path: Path, until: float) -> None:
        self.path, self.t0, self.until = path, time.monotonic(), until
        self.result: dict[str, Any] = {"status": "ok", "rows": []}
        self.before = json.loads(path.read_text()).get("so_far", {})  # earlier stages' results

    def left(self) -> float:
        """Seconds until the driver stops this stage."""
        return self.until - time.time()

    def save(self) -> None:
        self.result["stage_s"] = time.monotonic() - self.t0
        write_json(self.path, self.result)

    def row(self, **row: Any) -> None:
        self.result["rows"].append(row)
        self.save()

    def skip_row(self, label: str, need: float | None) -> bool:
        """Record `label` as skipped when less than `need` seconds are left (None: never run in this
        mode); True if skipped."""
        if need is None:
            self.row(label=label, skipped="not in --cpu mode (compiling takes ~20 s per model on 2 cores)")
            return True
        if self.left() >= need:
            return False
        self.row(label=label, skipped=f"out of stage time ({self.left():.0f} s left, ~{need:.0f} s needed)")
        self.result["status"] = "partial"
        return True


def _need(prof: dict, stage: str, compiled: Any) -> float | None:
    """Seconds a row must have left to start: 10 plain, the profile's figure compiled (None: not run)."""
    if not compiled:
        return 10
    return prof["compile_s"][stage] if prof["compile_s"] else None


def child(name: str, mode: str, args: argparse.Namespace) -> None:
    stage = Stage(args.part, args.until)
    _fault(name, stage)
    try:
        STAGE_FNS[name](stage, PROFILES[mode], mode, args)
    except Skip as e:
        stage.result.update(status="skipped", reason=str(e))
    except Exception as e:
        last = (str(e).strip().splitlines() or [""])[-1][:300]  # Tune's errors hold a whole traceback
        stage.result.update(
            status="error", reason=f"{type(e).__name__}: {last}", traceback=traceback.format_exc()[-3000:]
        )
    stage.save()
    sys.stdout.flush()
    os._exit(0)  # no teardown: Ray's and compile's atexit hooks can take seconds


def _fault(name: str, stage: Stage) -> None:
    """For the tests: GPU_CHECK_FAULT="env:crash,matmul:hang" makes those stages write one row, then
    abort (a segfault's stand-in) or hang, so the driver's handling of both is exercised."""
    faults = dict(f.split(":", 1) for f in os.environ.get("GPU_CHECK_FAULT", "").split(",") if ":" in f)
    if name in faults:
        stage.row(label=f"before the {faults[name]}")
        if faults[name] == "crash":
            os.abort()
        time.sleep(3600)


class Skip(Exception):
    """The stage cannot run here; its message is the reason."""


def _torch_device(mode: str) -> Any:
    import torch

    if mode == "gpu":
        if not torch.cuda.is_available():
            raise Skip("no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = True  # what a GPU user would set; conv fp32 also uses TF32
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda")
    return torch.device("cpu")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stage_env(stage: Stage, prof: dict, mode: str, args: argparse.Namespace) -> None:
    import torch

    r = stage.result
    r.update(
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        cuda_available=torch.cuda.is_available(),
        cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        ray=_version("ray"),
    )
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        r.update(
            device=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            capability=f"{p.major}.{p.minor}",
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            multiprocessors=p.multi_processor_count,
        )
    else:
        r.update(device=f"CPU ({r['cpu']}, {r['cpu_count']} cores)", gpu_count=0)
    try:  # the card's clocks and state as found (read only: METHOD.md, leave the settings alone)
        q = "name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,utilization.gpu"
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0:
            r["nvidia_smi"] = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def stage_matmul(stage: Stage, prof: dict, mode: str, args: argparse.Namespace) -> None:
    """The matrix-product rate: bf16 on the GPU (CUDA events), fp32 on the CPU (wall clock);
    random operands (zeros run faster than real data: METHOD.md), the median of `reps` products."""
    import torch

    device = _torch_device(mode)
    m = prof["matmul"]
    n = m["n"]
    dtype = torch.bfloat16 if mode == "gpu" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    times = []
    for i in range(m["warmup"] + m["reps"]):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            c = a @ b
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            t = time.perf_counter()
            c = a @ b
            ms = 1000 * (time.perf_counter() - t)
        if i >= m["warmup"]:
            times.append(ms)
    # a cheap check that the product is a product (not unwritten memory): its first row against fp64
    ref = a[0].double() @ b.double()
    rel = ((c[0].double() - ref).norm() / ref.norm()).item()
    ms = statistics.median(times)
    flops = 2 * n**3
    stage.result.update(
        dtype=str(dtype).replace("torch.", ""),
        n=n,
        ms=round(ms, 3),
        tflops=round(flops / (ms / 1000) / 1e12, 3),
        spread_ms=[round(min(times), 3), round(max(times), 3)],
        check_rel_error=rel,
    )
    if not rel < 0.05:
        raise RuntimeError(f"matmul check failed: row 0 off by {rel:.3g} relative to fp64")


def _base_config(prof: dict, mode: str, extra: list[str], base: str = "configs/cifar10/resnet_preact20.yaml") -> Any:
    """`base` (ResNet-preact-20 on CIFAR-10) on synthetic CIFAR-shaped data of the profile's size."""
    from sweeplab import config

    c, h, w = prof["shape"]
    over = [
        "data.name=synthetic",
        f"data.synthetic_shape=[{c},{h},{w}]",
        f"data.synthetic_train={prof['images']}",
        "data.synthetic_test=256",
        f"data.device={'cuda' if mode == 'gpu' else 'cpu'}",
        f"data.batch_size={prof['batch']}",
        *(f"model.{k}={v}" for k, v in prof["model"].items()),
        *extra,
    ]
    return config.load(str(ROOT / base), over)


def stage_throughput(stage: Stage, prof: dict, mode: str, args: argparse.Namespace) -> None:
    """Plain loop vs engine, ResNet-preact-20 on CIFAR-shaped synthetic data (throughput.py's pieces)."""
    import throughput
    from sweeplab.data import datasets

    device = _torch_device(mode)
    conf = _base_config(prof, mode, [])
    data = datasets.synthetic(prof["shape"], 10, prof["images"], 256)
    n, passes = prof["images"], prof["passes"]
    stage.result.update(images_per_pass=n, batch=conf.data.batch_size, shape=prof["shape"], model="resnet_preact-20")
    # (label, runner, precision, channels_last, compile mode or None)
    plan = [
        ("plain loop, fp32", "plain", "fp32", False, None),
        ("plain loop, bf16 + channels_last", "plain", "bf16", True, None),
        ("engine, fp32 + channels_last", "engine", "fp32", True, None),
        ("engine, bf16 + channels_last", "engine", "bf16", True, None),
        ("engine, bf16 + channels_last + compile", "engine", "bf16", True, "default"),
        ("engine, bf16 + channels_last + compile (reduce-overhead)", "engine", "bf16", True, "reduce-overhead"),
    ]
    for label, runner, precision, cl, compiled in plan:
        if stage.skip_row(label, _need(prof, "throughput", compiled)):
            continue
        row: dict[str, Any] = dict(label=label, runner=runner, precision=precision, channels_last=cl)
        row["compile"] = compiled or False
        try:
            if runner == "plain":
                rates = [
                    throughput.plain_loop_images_per_s(conf, data, n, str(device), precision, cl) for _ in range(passes)
                ]
                row["images_per_s"] = round(statistics.median(rates), 1)
            else:
                over = [f"train.precision={precision}", f"train.channels_last={str(cl).lower()}"]
                if compiled:
                    over += ["train.compile=true", f"train.compile_mode={compiled}"]
                c = _base_config(prof, mode, over)
                rate, warm = throughput.engine_images_per_s(c, data, passes)
                row.update(images_per_s=round(rate, 1), warmup_pass_s=round(warm, 1))
        except Exception as e:  # one variant failing (a compile error, say) leaves the others
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            stage.result["status"] = "partial"
        stage.row(**row)
    base = next((r for r in stage.result["rows"] if r["label"] == "plain loop, fp32" and "images_per_s" in r), None)
    if base:
        for r in stage.result["rows"]:
            if "images_per_s" in r:
                r["vs_plain_fp32"] = round(r["images_per_s"] / base["images_per_s"], 2)
    stage.save()


def stage_wrn(stage: Stage, prof: dict, mode: str, args: argparse.Namespace) -> None:
    """WRN training images/s (bf16 + channels_last on the GPU), its training FLOPs per image counted
    by torch's FlopCounterMode (one forward and backward; 2 FLOPs per multiply-add), and the product
    as a fraction of the measured matmul rate."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import throughput
    from sweeplab import models
    from sweeplab.data import datasets

    device = _torch_device(mode)
    w = prof["wrn"]
    precision = "bf16" if mode == "gpu" else "fp32"
    c, h, wd = prof["shape"]
    over = [
        f"data.synthetic_train={w['images']}",
        f"model.depth={w['depth']}",
        f"model.widening_factor={w['widening_factor']}",
        f"train.precision={precision}",
    ]
    wrn = "configs/cifar10/wrn.yaml"
    conf = _base_config({**prof, "model": {}}, mode, over, wrn)
    stage.result.update(
        model=f"wrn-{w['depth']}-{w['widening_factor']}",
        precision=precision,
        channels_last=True,
        batch=conf.data.batch_size,
        shape=prof["shape"],
    )
    model = models.build("wrn", 10, c, depth=w["depth"], widening_factor=w["widening_factor"]).to(device)
    x = torch.randn(8, c, h, wd, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    flops_per_image = counter.get_total_flops() / len(x)
    stage.result["train_flops_per_image"] = flops_per_image
    stage.result["params"] = sum(p.numel() for p in model.parameters())
    del model, x
    data = datasets.synthetic(prof["shape"], 10, w["images"], 256)
    rate_of = stage.before.get("matmul", {}).get("tflops")
    plan = [("engine, bf16 + channels_last" if mode == "gpu" else "engine, fp32", [])]
    plan.append((plan[0][0] + " + compile", ["train.compile=true"]))
    for label, extra in plan:
        if stage.skip_row(label, _need(prof, "wrn", bool(extra))):
            continue
        row: dict[str, Any] = {"label": label}
        try:
            conf = _base_config({**prof, "model": {}}, mode, over + extra, wrn)
            rate, warm = throughput.engine_images_per_s(conf, data, 2)
            achieved = rate * flops_per_image / 1e12
            row.update(images_per_s=round(rate, 1), warmup_pass_s=round(warm, 1), tflops=round(achieved, 3))
            if rate_of:
                row["fraction_of_matmul"] = round(achieved / rate_of, 3)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            stage.result["status"] = "partial"
        stage.row(**row)
    if not rate_of:
        stage.result["note"] = "no matmul rate measured: fraction_of_matmul left out"


def stage_packing(stage: Stage, prof: dict, mode: str, args: argparse.Namespace) -> None:
    """k trials at once, each asking for 1/k of the device, through sweeplab's runner on a local Ray."""
    if importlib.util.find_spec("ray") is None:
        raise Skip("ray not installed (carry its wheels: benchmarks/gpu_wheels.py)")
    import yaml

    from sweeplab import search_spaces
    from sweeplab.runner import cluster

    p = prof["packing"]
    gpu = mode == "gpu"
    cores = os.cpu_count() or 1
    # On the CPU the "device" is one core shared by the trials (fractional CPUs, 1 thread each), the
    # same arithmetic as the GPU's fractions; on the GPU each trial gets a share of the cores too.
    num_cpus = cores if gpu else 1
    storage = tempfile.mkdtemp(prefix="gpu_check_ray_")
    stage.result.update(
        model="resnet_preact-20",
        images_per_trial_epoch=p["images"],
        epochs=p["epochs"],
        precision="bf16" if gpu else "fp32",
        ray=_version("ray"),
        how="sweeplab.runner: cluster.start (local Ray) + launch.session on tune_exec (grid over train.seed)",
    )
    cluster.start(None, num_cpus, storage, dashboard=False)
    import ray

    if gpu and ray.cluster_resources().get("GPU", 0) < 1:
        # Ray finds GPUs through NVML; where that fails, name the one torch sees rather than lose the rows
        stage.result["note"] = f"Ray detected no GPU ({ray.cluster_resources()}); restarted with num_gpus=1"
        cluster.shutdown()
        os.environ["RAY_TMPDIR"] = cluster.private_temp_dir()
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=1,
            object_store_memory=100_000_000,
            include_dashboard=False,
            log_to_driver=False,
        )
    stage.result["ray_resources"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    try:
        for k in p["per_device"]:
            label = f"{k} per device"
            if stage.skip_row(label, 25 if gpu else 15):
                continue
            stage.row(**_pack(k, p, prof, gpu, cores, storage, search_spaces, cluster, yaml))
    finally:
        cluster.shutdown()
    one = next((r for r in stage.result["rows"] if r.get("per_device") == 1 and "aggregate_images_per_s" in r), None)
    for r in stage.result["rows"]:
        if one and "aggregate_images_per_s" in r:
            r["vs_one"] = round(r["aggregate_images_per_s"] / one["aggregate_images_per_s"], 2)
    stage.save()


class _Collect:
    """A runner View that keeps each trial's epoch results with the worker's clock at their end."""

    def __init__(self) -> None:
        self.results: dict[str, list[tuple[float, dict]]] = {}
        self.errors: dict[str, str] = {}

    def start(self, t: Any, epochs: int) -> None:
        self.results.setdefault(t.key, [])

    def result(self, t: Any, epochs: int, result: dict) -> None:
        keep = ("epoch", "time/epoch_s", "time/train_s", "time/images_per_s", "val/error")
        # the worker's clock when the epoch ended (same machine), else the driver's at arrival
        end = result.get("reported_at") or time.time()
        self.results.setdefault(t.key, []).append((end, {k: result.get(k) for k in keep}))

    def end(self, t: Any, epochs: int) -> None:
        if t.error:
            self.errors[t.key] = t.error[-500:]

    def retry(self, t: Any, epochs: int, error: str) -> None:
        self.errors[t.key] = f"retried: {error[-300:]}"


def _pack(k: int, p: dict, prof: dict, gpu: bool, cores: int, storage: str, search_spaces, cluster, yaml):
    c, h, w = prof["shape"]
    threads = 0 if gpu else 1
    resources = (
        {"workers": 1, "cpus_per_worker": max(1, cores // (2 * k)), "gpus_per_worker": 1 / k}
        if gpu
        else {"workers": 1, "cpus_per_worker": 1 / k}
    )
    spec = {
        "name": f"pack{k}",
        "config": str(ROOT / "configs/cifar10/resnet_preact20.yaml"),
        "overrides": {
            "data.name": "synthetic",
            "data.synthetic_shape": [c, h, w],
            "data.synthetic_train": p["images"],
            "data.synthetic_test": 256,
            "data.device": "cuda" if gpu else "cpu",  # fail loudly rather than train on the CPU
            "train.epochs": p["epochs"],
            "train.threads": threads,
            "train.precision": "bf16" if gpu else "fp32",
            **{f"model.{key}": v for key, v in prof["model"].items()},
        },
        "space": {"train.seed": {"grid": list(range(k))}},
        "search": {"name": "grid"},
        "scheduler": {"name": "fifo"},
        "max_concurrent": k,
        "resources": resources,
        # nothing goes to MLflow here: exporting each finished trial's model would only add seconds of
        # torch.export after the epochs this stage times
        "mlflow": {"log_models": False},
    }
    path = Path(storage) / f"pack{k}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    sweep, note = cluster.fit_resources(search_spaces.load(path), local=True)
    from sweeplab.runner import launch, tune_exec

    listener = _Collect()
    folder = Path(storage) / f"pack{k}"
    launch.write_meta(folder, {"sweep": sweep.snapshot(), "tracking_uri": "", "launch": folder.name})
    start = time.time()
    # a session of sweeplab's runner on the Ray started above; nothing goes to MLflow
    parent = {"tags": {}, "params": {}, "files": {}}
    launch.session(sweep, folder, parent, tune_exec.execute, listener, max_concurrent=k, follow="none")
    wall = time.time() - start
    row: dict[str, Any] = {
        "label": f"{k} per device",
        "per_device": k,
        "trials": len(listener.results),
        "resources_per_trial": resources,
        "sweep_wall_s": round(wall, 1),
    }
    if note:
        row["note"] = note
    if listener.errors:
        row["errors"] = listener.errors
    row.update(_aggregate(listener.results, k))
    return row


def _aggregate(results: dict[str, list[tuple[float, dict]]], k: int) -> dict[str, Any]:
    """Training images/s of k trials together. Epoch 1 of each carries its start-up (CUDA context,
    cuDNN autotuning) and the trials start seconds apart, so the rate is taken over the window in
    which every trial is past epoch 1: each epoch (start = end - time/epoch_s) counts with the part of
    its images that falls inside the window. Gaps between epochs (checkpoint, report) count as time."""
    epochs: list[list[tuple[float, float, float]]] = []  # per trial: (start, end, images)
    for res in results.values():
        later = [(t, m) for t, m in res if (m.get("epoch") or 0) >= 2 and m.get("time/images_per_s")]
        if later:
            epochs.append([(t - m["time/epoch_s"], t, m["time/images_per_s"] * m["time/train_s"]) for t, m in later])
    out: dict[str, Any] = {}
    if len(epochs) < k:
        out["error"] = f"{len(epochs)} of {k} trials reported epochs 2+"
    if not epochs:
        return out
    w0, w1 = max(e[0][0] for e in epochs), min(e[-1][1] for e in epochs)
    whole = (min(e[0][0] for e in epochs), max(e[-1][1] for e in epochs))
    if w1 - w0 <= 0:  # no moment with all of them past epoch 1: count everything over the whole span
        (w0, w1), out["note"] = whole, "the trials never all ran at once past epoch 1: whole span used"
    images = sum(n * max(0.0, min(b, w1) - max(a, w0)) / (b - a) for e in epochs for a, b, n in e if b > a)
    out.update(
        aggregate_images_per_s=round(images / (w1 - w0), 1),
        window_s=round(w1 - w0, 2),
        per_trial_images_per_s=[round(statistics.median(n / (b - a) for a, b, n in e if b > a), 1) for e in epochs],
    )
    return out


def stage_fashion_mnist(stage: Stage, prof: dict, mode: str, args: argparse.Namespace) -> None:
    """configs/fashion_mnist/resnet_preact20.yaml for its 200 epochs, if the first epoch says it fits."""
    from sweeplab import config, engine
    from sweeplab.data import datasets

    _torch_device(mode)
    folder = Path(args.fashion_mnist)
    names = [f"{n}-idx{d}-ubyte" for n, d in (("train-images", 3), ("train-labels", 1), ("t10k-images", 3))]
    names.append("t10k-labels-idx1-ubyte")
    if not all((folder / n).exists() or (folder / f"{n}.gz").exists() for n in names):
        raise Skip(f"no Fashion-MNIST IDX files in {folder} (--fashion-mnist DIR)")
    root = Path(tempfile.mkdtemp(prefix="gpu_check_fmnist_"))
    (root / "FashionMNIST").symlink_to(folder.resolve())  # sweeplab looks in ROOT/FashionMNIST
    over = [f"data.root={root}", "data.download=false", *prof["fmnist"]["overrides"]]
    conf = config.load(str(ROOT / "configs/fashion_mnist/resnet_preact20.yaml"), over)
    stage.result.update(
        config="configs/fashion_mnist/resnet_preact20.yaml",
        overrides=prof["fmnist"]["overrides"],
        epochs=conf.train.epochs,
        published_test_error=5.04,  # reference table fashionmnist_median3, first row (median of 3)
    )
    start = time.perf_counter()
    data = datasets.load(conf.data)
    trainer = engine.Trainer(conf, data)
    metrics: dict[str, float] = {}
    rates = []
    while trainer.epoch < conf.train.epochs:
        train = trainer.train_epoch()
        trainer.epoch += 1
        rates.append(train["time/images_per_s"])
        if trainer.epoch == conf.train.epochs or trainer.epoch % conf.train.eval_every == 0:
            metrics = trainer.evaluate()
        spent = time.perf_counter() - start
        projected = spent / trainer.epoch * conf.train.epochs
        if trainer.epoch == 1 and projected > stage.left() - 5:
            stage.result.update(first_epoch_s=round(spent, 1), projected_s=round(projected, 1))
            raise Skip(f"{conf.train.epochs} epochs would take ~{projected:.0f} s; {stage.left():.0f} s left")
    wall = time.perf_counter() - start
    stage.row(
        label=f"ResNet-preact-20, Fashion-MNIST, {conf.train.epochs} epochs",
        test_error=round(metrics["val/error"], 2),
        wall_s=round(wall, 1),
        train_images_per_s=round(statistics.median(rates), 1),
    )


STAGE_FNS = {
    "env": stage_env,
    "matmul": stage_matmul,
    "throughput": stage_throughput,
    "wrn": stage_wrn,
    "packing": stage_packing,
    "fashion_mnist": stage_fashion_mnist,
}


# ---- the rows for BENCHMARKS.md ----------------------------------------------------------------------


def _n(v: Any) -> str:
    return f"{v:,.0f}" if isinstance(v, (int, float)) and v >= 100 else str(v)


def rows(report: dict) -> list[str]:
    """Markdown lines: one table per stage that has rows, a line for each one that has none."""
    s = report["stages"]
    env = s.get("env", {})
    out = [
        f"GPU check ({report['mode']}), {report['started']}: {env.get('device')}, torch {env.get('torch')}, "
        f"CUDA {env.get('cuda')}, Ray {env.get('ray')}, {report.get('elapsed_s')} s"
    ]

    def missing(name: str) -> bool:
        st = s.get(name, {})
        if st.get("status") in ("ok", "partial", "timeout") and (st.get("rows") or "tflops" in st):
            return False
        out.append(f"\n{name}: {st.get('status', 'absent')}: {st.get('reason', '')}")
        return True

    if not missing("matmul"):
        m = s["matmul"]
        out.append(f"\nmatmul: {m['dtype']} {m['n']}^3: {m['tflops']} TFLOP/s ({m['ms']} ms median)")
    if not missing("throughput"):
        t = s["throughput"]
        out += [
            f"\nResNet-preact-20, {t['shape']} synthetic, batch {t['batch']}, {t['images_per_pass']:,} images per pass",
            "",
            "| variant | images/s | vs plain fp32 | warm-up pass s |",
            "|---|---:|---:|---:|",
        ]
        for r in t["rows"]:
            rate = _n(r.get("images_per_s", r.get("error") or r.get("skipped")))
            out.append(f"| {r['label']} | {rate} | {r.get('vs_plain_fp32', '')} | {r.get('warmup_pass_s', '')} |")
    if not missing("wrn"):
        w = s["wrn"]
        out += [
            f"\n{w['model']}, {w['precision']}, batch {w['batch']}: {w['train_flops_per_image'] / 1e9:.2f} GFLOP "
            "per training image",
            "",
            "| variant | images/s | TFLOP/s | of matmul rate |",
            "|---|---:|---:|---:|",
        ]
        for r in w["rows"]:
            rate = _n(r.get("images_per_s", r.get("error") or r.get("skipped")))
            frac = r.get("fraction_of_matmul")
            out.append(f"| {r['label']} | {rate} | {r.get('tflops', '')} | {f'{frac:.1%}' if frac else ''} |")
    if not missing("packing"):
        p = s["packing"]
        out += [
            f"\npacking: ResNet-preact-20, {p['precision']}, {p['images_per_trial_epoch']:,} images x {p['epochs']} "
            "epochs per trial (epochs 2+ timed)",
            "",
            "| trials per device | aggregate images/s | vs one | per trial |",
            "|---:|---:|---:|---|",
        ]
        for r in p["rows"]:
            agg = _n(r.get("aggregate_images_per_s", r.get("error") or r.get("skipped")))
            per = ", ".join(_n(x) for x in r.get("per_trial_images_per_s", []))
            out.append(f"| {r.get('per_device', r['label'])} | {agg} | {r.get('vs_one', '')} | {per} |")
    if not missing("fashion_mnist"):
        for r in s["fashion_mnist"]["rows"]:
            out.append(
                f"\n{r['label']}: test error {r['test_error']}% (published 5.04%), wall {r['wall_s']:.0f} s, "
                f"{_n(r['train_images_per_s'])} train images/s"
            )
    return out


if __name__ == "__main__":
    main()

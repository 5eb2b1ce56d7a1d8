"""Fetch the wheels the GPU check needs on the lent H200 machine into `.whl/`, Ray trimmed to fit.

That machine has Python 3.12, torch, pandas, pyarrow, grpcio and aiohttp but no Ray, and reaches no
registry; what it lacks travels as wheels, with the working tree, under a 64 MiB limit per call
(/work/.library/device/README.md). Ray 2.60.0's wheel is 79 MB: 32 MB of it is the Java worker's
jar and 2.5 MB the dashboard's web client, neither used by a local Python-only Ray without its
dashboard, so both are dropped (and their RECORD lines) to give a 44 MB wheel. The rest are what
`import ray`, `ray.tune` and a Tune trial import that the machine's package list does not have
(read off sys.modules of a driver and a trial here). MLflow and Optuna are not needed: the check
calls sweeplab's runner directly, with a grid search.

    python benchmarks/gpu_wheels.py            # -> .whl/*.whl, then prints their sizes
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = "ray==2.60.0"
DEPS = [  # pinned to what this project's venv resolved; pure Python except rpds-py and pydantic-core
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "starlette==1.10.0",
    "wcwidth==0.9.4",
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
DROP = ("ray/jars/", "ray/dashboard/client/build/")  # Java worker; the dashboard's web client
LIMIT = 64 * 2**20


def download(names: list[str], dest: Path) -> None:
    plat = [a for p in PLATFORMS + ["manylinux1_x86_64"] for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
    subprocess.run([*cmd, "--implementation", "cp", *plat, "-d", str(dest), *names], check=True)


def trim(wheel: Path) -> Path:
    """The wheel without DROP's folders, RECORD rewritten to match (pip installs what RECORD lists)."""
    out = wheel.with_suffix(".trim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in src.infolist():
            if info.filename.startswith(DROP):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not line.startswith(DROP)).encode()
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    out.replace(wheel)
    return wheel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=ROOT / ".whl")
    args = ap.parse_args()
    args.dest.mkdir(exist_ok=True)
    download([RAY, *DEPS], args.dest)
    (ray_wheel,) = args.dest.glob("ray-2.60.0-*.whl")
    before = ray_wheel.stat().st_size
    trim(ray_wheel)
    total = 0
    for w in sorted(args.dest.glob("*.whl")):
        total += w.stat().st_size
        print(f"{w.stat().st_size / 2**20:7.1f} MiB  {w.name}")
    print(f"ray trimmed from {before / 2**20:.1f} MiB; all wheels {total / 2**20:.1f} MiB of the {LIMIT // 2**20} MiB")
    if total > LIMIT - 4 * 2**20:
        sys.exit("too big to travel with the working tree")


if __name__ == "__main__":
    main()

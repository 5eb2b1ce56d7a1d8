"""Does this CPU's torch corrupt the heap with channels_last? (why engine.nhwc_is_safe exists)

Runs the backward of a stride-2 1x1 conv with 4 input channels in NHWC, the shape of the tests' tiny
ResNet's shortcut, in a child process per thread count, and prints whether each child survived.

    python benchmarks/nhwc_crash.py
"""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
conv = torch.nn.Conv2d(4, 8, 1, stride=2, bias=False).to(memory_format=torch.channels_last)
for _ in range(30):
    x = torch.randn(64, 4, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    conv(x).sum().backward()
"""

if __name__ == "__main__":
    import torch

    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for threads in (1, 2):
        r = subprocess.run([sys.executable, "-c", CHILD, str(threads)], capture_output=True, text=True)
        last = (r.stderr.strip().splitlines() or ["ok"])[-1]
        print(f"{threads} thread(s): exit {r.returncode} ({last})")

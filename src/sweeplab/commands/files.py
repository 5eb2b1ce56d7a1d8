"""`sweeplab schema` (JSON Schemas of config and sweep files) and `sweeplab convert` (a W&B sweep file)."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from sweeplab import config as cfg
from sweeplab.core.errors import ConfigError, SweepError
from sweeplab.search_spaces import convert as wandb
from sweeplab.search_spaces import json_schema, load


def schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of a config or a sweep file (or write it to --out)."""
    text = json.dumps(json_schema.SCHEMAS[args.kind](), indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote the {args.kind} file schema to {args.out}")
    else:
        print(text, end="")
    return 0


def _header(source: str, spec: dict) -> str:
    """The converted file's opening comments: where it came from and what W&B did differently."""
    lines = [f"# Converted from {source} (a W&B Sweeps file) by `sweeplab convert`; format: docs/sweeps.md."]
    if spec.get("program") or spec.get("command"):
        lines.append(f"# W&B ran {spec.get('program') or spec.get('command')}: a trial here trains `config` instead.")
    if spec.get("method", "random") != "grid" and "run_cap" not in spec:
        lines.append("# W&B runs a random or bayes sweep until stopped: here search.num_samples trials (default 10).")
    for key in wandb.DROPPED:
        if spec.get(key):
            lines.append(f"# W&B {key}: {' '.join(str(spec[key]).split())}")
    return "\n".join(lines) + "\n"


def convert(args: argparse.Namespace) -> int:
    """`sweeplab convert W&B.yaml --config CONFIG [--out FILE]`: the sweeplab sweep file, checked by
    compiling it; every problem of the W&B file at once (exit 2, nothing written) when it cannot be."""
    source = Path(args.file)
    spec = cfg.read_yaml(source, "sweep")
    if isinstance(spec, dict) and "space" in spec:
        raise SweepError(f"{source}: already a sweeplab sweep file (it has 'space'): run it as it is")
    if args.config is not None:
        cfg.load(args.config)  # a bad config is named as such, not as a problem of the W&B file
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        raise ConfigError(f"--out {out} exists: choose another file or remove it")
    try:
        converted = wandb.convert(spec, args.config)
    except wandb.Unconvertible as e:
        n = len(e.problems)
        raise SweepError(f"{source}: cannot convert ({n} problem{'s' * (n > 1)}): {' | '.join(e.problems)}") from None
    text = _header(str(source), spec) + wandb.render(converted)
    # compiled as `sweeplab run` would (the config is found from the output's folder or the working directory)
    folder = out.parent if out is not None else Path.cwd()
    fd, tmp = tempfile.mkstemp(suffix=".yaml", prefix="sweeplab-convert-", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        sweep = load(tmp)
        if out is not None:
            os.replace(tmp, out)
    except SweepError as e:
        raise SweepError(f"{source}: converted, but the result does not compile: {e}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    if out is None:
        print(text, end="")
    else:
        n, parts = sweep.size()
        print(f"wrote {out}: {n} trials ({parts})")
        print(f"check it with `sweeplab run {out} --dry-run`, try it with `sweeplab run {out} --smoke`")
    return 0

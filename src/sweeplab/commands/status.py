"""`sweeplab status [NAME]`: launches and the states of their trials, from their ledgers alone (no Ray,
no MLflow, nothing unpickled); what a killed driver's Ray left running is stopped on the way."""

from __future__ import annotations

import argparse
import sys

from sweeplab import ledger
from sweeplab.commands import listing
from sweeplab.commands.sweep import resolve_storage
from sweeplab.core.errors import SweepError, suggest
from sweeplab.runner import launch as L


def status(args: argparse.Namespace) -> int:
    """`sweeplab status [NAME]`: launches and the states of their trials, from their ledgers alone."""
    storage = resolve_storage(args.storage)
    names = L.launches(storage)
    if args.name and args.name not in names:
        raise SweepError(f"no launch {args.name!r} in {storage}{suggest(args.name, names)}")
    if not names:
        print(f"no launches in {storage}")
        return 0
    for name in [args.name] if args.name else names:
        try:
            meta = L.read_meta(storage / name) or {}
        except SweepError as e:
            if args.name:
                raise
            print(f"sweeplab: {e}", file=sys.stderr)
            continue
        record = ledger.read(storage / name)[0]
        listing.skipped(record)
        running = ledger.held(storage / name)
        if not running:  # its driver is gone: so is anything its Ray left behind
            from sweeplab.runner import cluster

            cluster.reap(storage / name / cluster.PROCESSES)
        listing.print_status(name, meta, record, detail=bool(args.name), running=running)
    return 0

"""The `sweeplab` command line: train, run, resume, status, best, table, report, export, ui, models.

Exit codes: 0 ok, 2 bad input (the message names the key or file, no traceback), 1 runtime failure.
Heavy imports (torch, Ray, MLflow) happen inside the commands, so `--help` and bad input are fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from sweeplab.commands import analysis, models, status, sweep, train
from sweeplab.core import inputs, quiet
from sweeplab.core.errors import ConfigError
from sweeplab.core.names import check_name

Handler = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr, like every other bad input (exit 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"sweeplab: error: {_one_line(message)} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _one_line(text: str) -> str:
    """Control characters (a newline in a key, say) shown escaped: an error is one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def count(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            within = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be an integer {within}, got {value}")
        return value

    return parse


def _tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)"
    )


def _force(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--force", action="store_true", help=what)


def _smoke(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--smoke", action="store_true", help="only the runs of `sweeplab run --smoke` launches (left out by default)"
    )


def _progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        choices=("lines", "tune"),
        default="lines",
        help="lines (default): a line per trial event and a live status (counts, best, epochs, time left); "
        "tune: Tune's own status table instead (MLflow logging the same)",
    )


def parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="sweeplab", description="Hyperparameter sweeps of image classification training on Ray, tracked in MLflow."
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one config, or rerun a sweep trial from its MLflow run; no Ray")
    p.add_argument("config", nargs="?", help="YAML config (configs/...); not with --from-run")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=0.2")
    p.add_argument(
        "--from-run",
        metavar="RUN_ID",
        help="train the config of this trial's MLflow run (its config.yaml artifact) instead of a CONFIG file",
    )
    p.add_argument(
        "--output",
        default=None,
        help="run folder (default: runs/<config stem>; with --from-run runs/<trial label or run id>)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT/checkpoint.pt; with --from-run and none there, from the run's checkpoint artifact",
    )
    p.add_argument(
        "--stop-after",
        type=count(1),
        metavar="EPOCH",
        help="stop after this epoch's checkpoint (continue later with --resume)",
    )
    _tracking_uri(p)
    p.set_defaults(fn=train.command)

    p = sub.add_parser("models", help="list the models, their options and parameter counts")
    p.add_argument("--no-counts", dest="counts", action="store_false", help="skip building each model")
    p.set_defaults(fn=lambda a: models.list_models(a.counts))

    p = sub.add_parser("run", help="run a sweep file on Ray")
    p.add_argument("sweep", help="sweep YAML (sweeps/...)")
    p.add_argument("--smoke", action="store_true", help="apply the sweep's smoke block")
    p.add_argument("--dry-run", action="store_true", help="print the compiled trials; start nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: one JSON object per trial (full config)")
    p.add_argument("--name", help="launch name (default: <sweep>-<timestamp>)")
    p.add_argument("--address", help="Ray cluster address (auto or HOST:PORT); default: start a local Ray")
    p.add_argument("--storage", help="Tune storage folder or URI (default: ./runs/ray)")
    p.add_argument("--max-concurrent", type=count(1), help="at most N trials at once")
    p.add_argument(
        "--max-trials",
        type=count(1),
        metavar="N",
        help="refuse sweeps of more than N trials (default: 10000), checked before any trial is compiled",
    )
    p.add_argument("--num-cpus", type=count(1, inputs.MAX_CPUS), help="CPUs of the local Ray (default: all)")
    _progress(p)
    _tracking_uri(p)
    p.set_defaults(fn=sweep.run)

    p = sub.add_parser("resume", help="continue a sweep whose driver died")
    p.add_argument("name", help="launch name (see `sweeplab status`)")
    p.add_argument("--storage", help="Tune storage folder or URI (default: ./runs/ray)")
    p.add_argument("--address", help="Ray cluster address; default: start a local Ray")
    p.add_argument("--num-cpus", type=count(1, inputs.MAX_CPUS), help="CPUs of the local Ray (default: all)")
    _progress(p)
    _tracking_uri(p)
    p.set_defaults(fn=sweep.resume)

    p = sub.add_parser("status", help="list sweeps and the states of their trials")
    p.add_argument("name", nargs="?", help="launch name; default: all launches")
    p.add_argument("--storage", help="Tune storage folder or URI (default: ./runs/ray)")
    p.set_defaults(fn=status.status)

    p = sub.add_parser("best", help="the best trials of a sweep or launch")
    p.add_argument("target", metavar="SWEEP_OR_LAUNCH")
    p.add_argument("--metric", default="val/error")
    p.add_argument("--top", type=count(1), default=1)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--yaml", action="store_true", help="write the best config as a `sweeplab train` YAML")
    _smoke(p)
    _tracking_uri(p)
    p.set_defaults(fn=analysis.best)

    p = sub.add_parser("table", help="rebuild a results table from the logged runs")
    p.add_argument("table_id", nargs="?")
    p.add_argument("--list", action="store_true", help="list every table id and the sweep that fills it")
    p.add_argument("--all", action="store_true", help="every table with runs behind it")
    p.add_argument(
        "--summary",
        action="store_true",
        help="only the verdict line (consistent / better / worse / needs more seeds) of each table",
    )
    p.add_argument("--format", choices=("md", "csv", "html"), default="md")
    p.add_argument("--out", help="also write the table (and its figures) into this folder")
    _force(p, "replace the table's files that --out holds already")
    _smoke(p)
    _tracking_uri(p)
    p.set_defaults(fn=analysis.table)

    p = sub.add_parser("report", help="every table and figure with runs behind it, with an index page")
    p.add_argument("--out", default="report", help="a new or empty folder, or an earlier report's (default: report)")
    _force(p, "write into a folder that holds other files")
    p.add_argument(
        "--ui-url",
        default="http://127.0.0.1:5000",
        help="the MLflow UI that the HTML rows link to (default: where `sweeplab ui` serves it)",
    )
    _smoke(p)
    _tracking_uri(p)
    p.set_defaults(fn=analysis.report)

    p = sub.add_parser("export", help="every trial of a sweep as one Parquet file")
    p.add_argument("target", metavar="SWEEP_OR_LAUNCH")
    p.add_argument("--out", required=True, help="FILE.parquet")
    _force(p, "replace FILE if it exists")
    _smoke(p)
    _tracking_uri(p)
    p.set_defaults(fn=analysis.export)

    p = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1, opened on a sweep's runs")
    p.add_argument("--port", type=count(1, 65535), default=5000)
    p.add_argument("--experiment", metavar="SWEEP", help="the sweep whose runs open (default: the latest one)")
    p.add_argument("--no-browser", action="store_true", help="only print the URL")
    _tracking_uri(p)
    p.set_defaults(fn=analysis.ui)
    _habits(ap, sub)
    return ap


# The commands that read the tracking URI (and so $MLFLOW_TRACKING_URI when no flag names one).
TRACKING = ("run", "best", "table", "report", "export", "ui")


def door(args: argparse.Namespace) -> None:
    """Every flag of the command checked before the command starts (core/inputs.py): a bad one is one
    line and exit 2, with nothing started or written. What needs the command's own knowledge (a sweep
    file, a table id, whether the store holds the sweep) is checked by the command, before it writes."""
    cmd = args.command
    uri = getattr(args, "tracking_uri", None)
    if uri is not None:
        inputs.tracking_uri(uri)
    elif os.environ.get("MLFLOW_TRACKING_URI") and (cmd in TRACKING or getattr(args, "from_run", None)):
        inputs.tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI")
    if getattr(args, "storage", None) is not None:
        inputs.storage(args.storage, write=cmd != "status")
    if getattr(args, "address", None) is not None:
        inputs.address(args.address)
    if cmd == "run" and args.name is not None:
        check_name(args.name, "--name")
    if cmd in ("resume", "status") and args.name is not None:
        check_name(args.name, "launch name")
    if cmd == "train":
        if args.output is not None:
            inputs.folder(args.output, "--output")
        if args.from_run is not None:
            inputs.run_id(args.from_run)
    if cmd in ("best", "export"):
        inputs.given(args.target, "SWEEP_OR_LAUNCH")
    if cmd == "table":
        if args.table_id is not None:
            inputs.given(args.table_id, "TABLE_ID")
        if args.out is not None:
            inputs.folder(args.out, "--out")
    if cmd == "report":
        inputs.folder(args.out, "--out")
        inputs.http_url(args.ui_url, "--ui-url")
    if cmd == "export":
        inputs.out_file(args.out, "--out", ".parquet", args.force)
    if cmd == "ui" and args.experiment is not None:
        inputs.given(args.experiment, "--experiment")


# ---- habits of the ecosystem: --version, `schema`, `convert`, `ui --verbose`, `train --no-mlflow`, help on every flag

_HELP = {  # (command, dest) -> help, for the arguments defined above without one (a test walks every flag)
    ("best", "target"): "a sweep (its MLflow experiment) or one launch of it",
    ("best", "metric"): "rank by this per-epoch metric's last value (default: val/error; accuracies rank high first)",
    ("best", "top"): "how many trials to list (default: 1)",
    ("best", "json"): "one JSON object per trial: run id, label, value, varied keys, params, sweeplab tags",
    ("table", "table_id"): "a reference table id (`sweeplab table --list` names them all)",
    ("table", "format"): "md (default), csv (rows only; the verdict line goes to stderr) or html",
    ("report", "out"): "the folder to write the tables, figures (PNG and SVG) and index.md / index.html into",
    ("export", "target"): "a sweep (its MLflow experiment) or one launch of it",
    ("ui", "port"): "the port on 127.0.0.1 to serve the MLflow UI on (default: 5000)",
}


def _version() -> str:
    from importlib import metadata

    try:
        version = metadata.version("sweeplab")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        version = "(not installed)"
    return f"sweeplab {version} from {Path(__file__).parent} (Python {sys.version.split()[0]})"


class _Version(argparse.Action):
    """`--version`, read from the installed package's metadata only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print sweeplab's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(_version())
        parser.exit()


def _habits(ap: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    from sweeplab.commands import files

    ap.add_argument("--version", action=_Version)
    p = sub.add_parser("schema", help="the JSON Schema of config or sweep files, for editors' YAML plugins")
    p.add_argument("kind", nargs="?", choices=("config", "sweep"), default="sweep", help="which files (default: sweep)")
    p.add_argument("--out", help="write the schema to this file instead of stdout")
    p.set_defaults(fn=files.schema)
    p = sub.add_parser("convert", help="write a W&B sweep file as a sweeplab sweep file, or list all it lacks")
    p.add_argument("file", help="the W&B sweep YAML (method, metric, parameters, ...)")
    p.add_argument("--config", help="the config file its trials train (W&B's runs a program instead)")
    p.add_argument("--out", help="write the sweep file here (refused if it exists); default: print it")
    p.set_defaults(fn=files.convert)
    sub.choices["ui"].add_argument(
        "--verbose", action="store_true", help="also show the MLflow server's own start-up and request lines"
    )
    train = sub.choices["train"]
    train.add_argument(
        "--no-mlflow", action="store_true", help="log nothing to MLflow (default: the run, its metrics and its model)"
    )
    train.add_argument("--experiment", default="train", help="the MLflow experiment of the run (default: train)")
    for name, parser_ in sub.choices.items():
        for action in parser_._actions:
            action.help = action.help or _HELP.get((name, action.dest))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with quiet.held():  # a library's warnings never make a refusal more than its one line
        try:
            door(args)
            return args.fn(args)
        except ConfigError as e:  # every bad-input error derives from ConfigError
            quiet.drop()
            print(f"sweeplab: error: {_one_line(str(e))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("sweeplab: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader went away (`sweeplab models | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1


def entry() -> None:
    """The `sweeplab` command: `main`, then exit without the interpreter's teardown."""
    code = main()
    # Unloading torch, Ray and MLflow module by module costs 1-2 s at every exit. By now every file
    # is closed, every MLflow run ended and Ray stopped; only the streams' buffers are left to flush.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code or 0)


if __name__ == "__main__":
    entry()

"""`opt-neurons` command line: analyze, report, show, compare, demo."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from ._core import __version__
from .errors import OptNeuronsError
from .params import RunOptions, Thresholds, cli_fields


def _flag_type(f: dataclasses.Field) -> Any:
    t = str(f.type)
    return int if t.startswith("int") else float if t.startswith("float") else str


def _add_fields(p: argparse.ArgumentParser, cls: Any, prefix: str, title: str) -> None:
    """One flag per field of `cls` (params.py holds the defaults, ranges and help)."""
    g = p.add_argument_group(title)
    for f in cli_fields(cls):
        flag = f.metadata.get("flag") or f.name
        help_text = f.metadata.get("help", "")
        g.add_argument(f"--{flag.replace('_', '-')}", type=_flag_type(f), default=None, dest=f"{prefix}{f.name}",
                       choices=f.metadata.get("choices"), metavar=None if f.metadata.get("choices") else
                       _flag_type(f).__name__.upper(), help=f"{help_text} (default {f.default})".strip())  # fmt: skip


def _given(args: argparse.Namespace, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix) and v is not None}


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        help="file or folder of .txt/.jsonl/.parquet, or hf:NAME[:CONFIG][:SPLIT] (a Hugging "
        "Face dataset through `datasets`; default: the bundled corpus)",
    )
    p.add_argument("--no-progress", action="store_true")
    _add_fields(p, RunOptions, "o_", "run options")
    _add_fields(p, Thresholds, "t_", "thresholds (METHOD.md defaults)")


def _run_kwargs(args: argparse.Namespace) -> dict:
    return {**_given(args, "o_"), **_given(args, "t_"), "progress": not args.no_progress}


def _show(a: Any) -> None:
    from .report import run_time

    print(a.summary())
    by_source = "dead_fraction_by_source"
    print(a.layers.drop(by_source, strict=False))
    if by_source in a.layers.columns:  # dead fraction of each layer on each named source, a column per source
        print(a.layers.select("layer", by_source).unnest(by_source))
    print(f"run time: {run_time(a.metadata)}")


def cmd_analyze(args: argparse.Namespace) -> None:
    from .pipeline import analyze

    out = Path(args.out or f"runs/{Path(str(args.model)).name}")
    a = analyze(args.model, args.data, out=out, report=args.report, **_run_kwargs(args))
    if a is None:  # a non-zero rank of a data-parallel run: rank 0 writes the tables
        return
    _show(a)
    print(f"saved to {out}")
    if args.report:
        print(f"report: {out / 'report.html'}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .pipeline import analyze

    out = Path(args.out or "runs/demo")
    kw = _run_kwargs(args)
    kw.setdefault("n_tokens", 200_000)
    a = analyze("demo", args.data, out=out, report=True, **kw)
    _show(a)
    print(f"report: {out / 'report.html'}")


def cmd_report(args: argparse.Namespace) -> None:
    from .analysis import load
    from .report import write_report

    print(write_report(load(args.dir), args.out or args.dir))


def cmd_compare(args: argparse.Namespace) -> None:
    from .report import compare

    print(compare(args.dirs, args.out))


def cmd_show(args: argparse.Namespace) -> None:
    import sys

    from .analysis import load
    from .show import card_text

    a = load(args.dir)
    print(card_text(a, args.layer, args.neuron, model=args.model or "auto", data=args.data, context=args.context,
                    color=sys.stdout.isatty()))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opt-neurons", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("analyze", help="analyse a model's neurons and save the tables")
    p.add_argument("model", help="hub id (e.g. facebook/opt-125m), local directory, or 'demo'")
    p.add_argument("--out", help="output folder (default runs/<model name>); a rerun resumes from it")
    p.add_argument("--report", action="store_true", help="also write the figures and HTML report")
    _add_run_options(p)
    p.set_defaults(func=cmd_analyze)
    p = sub.add_parser("demo", help="analyse the bundled small trained OPT offline and write the report")
    p.add_argument("--out", help="output folder (default runs/demo)")
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("report", help="write figures and an HTML page for a saved run")
    p.add_argument("dir")
    p.add_argument("--out", help="where to write (default: the run's folder)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("show", help="print one neuron's card and example contexts")
    p.add_argument("dir", help="a saved run's folder")
    p.add_argument("layer", type=int)
    p.add_argument("neuron", type=int)
    p.add_argument("--data", help="the data the run analysed (default: the bundled corpus or the run's one file)")
    p.add_argument(
        "--model", help="model for the top promoted / suppressed tokens (default: the run's, if local and small)"
    )
    p.add_argument("--context", type=int, default=12, help="tokens shown before the firing one (default 12)")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("compare", help="overlay several runs on relative depth, with a summary table")
    p.add_argument("dirs", nargs="+")
    p.add_argument("--out", default="runs/compare")
    p.set_defaults(func=cmd_compare)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except OptNeuronsError as e:
        print(f"opt-neurons: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("opt-neurons: interrupted; rerun the same command to resume from the checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

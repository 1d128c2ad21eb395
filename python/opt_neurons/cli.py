"""`opt-neurons` command line: analyze, report, compare, demo."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from . import _core
from .errors import OptNeuronsError
from .params import Thresholds


def _add_thresholds(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("thresholds (METHOD.md defaults)")
    for f in dataclasses.fields(Thresholds):
        g.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None, dest=f"t_{f.name}",
                       metavar=type(f.default).__name__.upper(), help=f"default {f.default}")  # fmt: skip


def _thresholds(args: argparse.Namespace) -> dict:
    return {k[2:]: v for k, v in vars(args).items() if k.startswith("t_") and v is not None}


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="file or folder of .txt/.jsonl/.parquet (default: the bundled corpus)")
    p.add_argument("--tokens", type=int, default=None, help="number of tokens to analyse")
    p.add_argument("--detail-tokens", type=int, default=None,
                   help="token, n-gram and position statistics over only this many tokens, dead neurons over "
                        "all --tokens (the paper: 5000000 of 20000000)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the model's maximum)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--device-map", default=None, help="accelerate device map, e.g. auto")
    p.add_argument("--ngram-capacity", type=int, default=_core.DEFAULT_CAPACITY,
                   help="distinct tokens / bigrams / trigrams counted exactly per neuron (memory grows with it)")
    p.add_argument("--execution", default="auto", choices=["auto", "memory", "offload", "layer"],
                   help="memory: whole model on the device; offload: accelerate device_map; layer: layer-major "
                        "(one layer on the device at a time, for models larger than the GPU); auto: by size")
    p.add_argument("--block-size", type=int, default=64, help="sequences per block in layer-major execution")
    p.add_argument("--offload-folder", default=None, help="folder for weights accelerate offloads to disk")
    p.add_argument("--checkpoint-every", type=int, default=256, help="sequences between checkpoints")
    p.add_argument("--activation-threshold", type=float, default=0.0,
                   help="a neuron fires when its activation output is > this (METHOD.md; default 0)")
    p.add_argument("--no-progress", action="store_true")
    _add_thresholds(p)


def _run_kwargs(args: argparse.Namespace) -> dict:
    kw = dict(detail_tokens=args.detail_tokens, seq_len=args.seq_len, batch_size=args.batch_size, dtype=args.dtype,
              device_map=args.device_map, progress=not args.no_progress, ngram_capacity=args.ngram_capacity, execution=args.execution,
              block_size=args.block_size, offload_folder=args.offload_folder, checkpoint_every=args.checkpoint_every,
              activation_threshold=args.activation_threshold,
              **_thresholds(args))  # fmt: skip
    if args.tokens is not None:
        kw["n_tokens"] = args.tokens
    return kw


def _show(a: Any) -> None:
    from .report import run_time

    print(a.summary())
    print(a.layers)
    print(f"run time: {run_time(a.metadata)}")


def cmd_analyze(args: argparse.Namespace) -> None:
    from .pipeline import analyze

    out = Path(args.out or f"runs/{Path(str(args.model)).name}")
    a = analyze(args.model, args.data, out=out, **_run_kwargs(args))
    if a is None:  # a non-zero rank of a data-parallel run: rank 0 writes the tables
        return
    _show(a)
    print(f"saved to {out}")
    if args.report:
        print(f"report: {a.report(out)}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .pipeline import analyze

    out = Path(args.out or "runs/demo")
    kw = _run_kwargs(args)
    kw.setdefault("n_tokens", 200_000)
    a = analyze("demo", args.data, out=out, **kw)
    _show(a)
    print(f"report: {a.report(out)}")


def cmd_report(args: argparse.Namespace) -> None:
    from .analysis import load

    print(load(args.dir).report(args.out or args.dir))


def cmd_compare(args: argparse.Namespace) -> None:
    from .report import compare

    print(compare(args.dirs, args.out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opt-neurons", description=__doc__)
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

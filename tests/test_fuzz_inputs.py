"""Malformed input thrown at `analyze()` (on a tiny model), `load()` and the CLI (issue 21's fuzz suite; the
accumulators' own suite is tests/test_fuzz_state.py): each call gives a correct result or an
`OptNeuronsError` subclass with a message, never another exception. OPT_NEURONS_FUZZ_SCALE=k runs k times
as many examples."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import opt_neurons
from opt_neurons.cli import main
from opt_neurons.errors import OptNeuronsError

from conftest import save_tiny_opt

SCALE = int(os.environ.get("OPT_NEURONS_FUZZ_SCALE", "1"))
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), derandomize=SCALE == 1)
T = 16
N_NEURONS, N_LAYERS = 40, 2
TRIED: dict[str, int] = {}


def tried(kind: str) -> None:
    TRIED[kind] = TRIED.get(kind, 0) + 1


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_opt(tmp_path_factory.mktemp("fuzz") / "opt", layers=N_LAYERS, max_positions=T, ffn_dim=N_NEURONS)


GOOD_TOKENS = np.tile(np.arange(T), (3, 1)) + 100


def check_result(a: opt_neurons.Analysis, n_tokens: int) -> None:
    """What any correct result satisfies, whatever the thresholds."""
    n = a.neurons
    assert n.height == N_LAYERS * N_NEURONS and a.layers.height == N_LAYERS
    assert (n["dead"] == (n["n_active"] == 0)).all()
    assert np.allclose(n["frequency"].to_numpy(), n["n_active"].to_numpy() / n_tokens)
    assert a.metadata["n_tokens"] == n_tokens


def call(fn, *args, **kwargs):
    """fn's result, or None when it raised an OptNeuronsError with a message (anything else fails the test)."""
    try:
        return fn(*args, **kwargs)
    except OptNeuronsError as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        return None


# ------------------------------------------------------------------------------------------ options

anything = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.lists(st.integers(), max_size=2),
)  # fmt: skip
small_ints = st.integers(-3, 40)
unit = st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0, float("nan"), float("inf")]))
OPTION_VALUES = {
    "seq_len": st.one_of(small_ints, anything), "batch_size": st.one_of(small_ints, anything),
    "block_size": st.one_of(small_ints, anything), "ngram_capacity": st.one_of(small_ints, anything),
    "detail_tokens": st.one_of(st.none(), small_ints, anything), "checkpoint_every": small_ints,
    "execution": st.sampled_from(["memory", "layer", "auto", "offload", "", "GPU"]),
    "dtype": st.sampled_from([None, "float32", "fp32", "bfloat16", "int8", ""]),
    "coverage": unit, "token_hit_rate": unit, "detector_share": unit, "active_level": unit, "low": unit,
    "high": unit, "strong_low": unit, "strong_high": unit, "mi_threshold": st.one_of(unit, anything),
    "max_tokens": st.one_of(small_ints, anything), "max_trigrams": st.one_of(small_ints, anything),
    "min_oscillations": small_ints, "smoothing_half_width": small_ints, "baseline_draws": small_ints,
    "seed": st.one_of(small_ints, anything),
}  # fmt: skip
options = st.lists(st.sampled_from(sorted(OPTION_VALUES)), unique=True, max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: OPTION_VALUES[k] for k in keys})
)


@settings(max_examples=40 * SCALE, **SETTINGS)
@given(kwargs=options)
def test_fuzz_analyze_options(model, kwargs):
    tried("analyze options")
    if kwargs.get("execution") == "offload":
        kwargs["execution"] = "memory"  # accelerate's offload is exercised in test_execution; slow here
    a = call(opt_neurons.analyze, model, GOOD_TOKENS, progress=False, **kwargs)
    if a is not None:
        check_result(a, GOOD_TOKENS.size)


# ------------------------------------------------------------------------------------------ data

arrays = st.builds(
    lambda shape, dtype, lo, span, seed: (
        np.random.default_rng(seed).integers(lo, lo + span + 1, size=shape).astype(dtype)
    ),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
    dtype=st.sampled_from([np.int64, np.int32, np.uint16, np.float32, np.bool_]),
    lo=st.integers(-5, 60000),
    span=st.integers(0, 60000),
    seed=st.integers(0, 9),
)
texts = st.lists(st.one_of(st.text(max_size=30), st.none(), st.integers(), st.binary(max_size=4)), max_size=4)
data_values = st.one_of(
    arrays, texts, st.text(max_size=10), st.dictionaries(st.text(max_size=3), st.text(max_size=5), max_size=2),
    st.integers(), st.binary(max_size=5), st.just(b""), st.just([]), st.just(()), st.just(set()),
)  # fmt: skip


@settings(max_examples=60 * SCALE, **SETTINGS)
@given(data=data_values, seq_len=st.one_of(st.none(), st.integers(2, T)))
def test_fuzz_analyze_data(model, tmp_path_factory, data, seq_len):
    tried("analyze data")
    if isinstance(data, str):  # a path: one that exists in a fresh folder, or not
        folder = tmp_path_factory.mktemp("data")
        if data and "/" not in data and data not in (".", ".."):
            (folder / "d.txt").write_text(data)
            data = folder / "d.txt"
        else:
            data = folder / "missing.txt"
    a = call(opt_neurons.analyze, model, data, progress=False, n_tokens=40, seq_len=seq_len)
    if a is not None:
        check_result(a, a.metadata["n_tokens"])


jsonl_lines = st.lists(st.one_of(
    st.just('{"text": "a fine line of text"}'), st.just('{"text": 3}'), st.just('{"txt": "x"}'), st.just("[1, 2]"),
    st.just('{"text": "unterminated'), st.just(""), st.just("   "), st.text(max_size=12),
    st.just('{"text": null}'), st.just('"just a string"'),
), min_size=0, max_size=5)  # fmt: skip


@settings(max_examples=40 * SCALE, **SETTINGS)
@given(lines=jsonl_lines, suffix=st.sampled_from([".jsonl", ".txt", ".parquet", ".csv"]))
def test_fuzz_data_files(model, tmp_path_factory, lines, suffix):
    tried("data files")
    f = tmp_path_factory.mktemp("files") / f"d{suffix}"
    f.write_text("\n".join(lines))
    a = call(opt_neurons.analyze, model, f, progress=False, n_tokens=40)
    if a is not None:
        check_result(a, a.metadata["n_tokens"])


# ------------------------------------------------------------------------------------------ load()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> tuple[Path, opt_neurons.Analysis]:
    out = tmp_path_factory.mktemp("saved") / "run"
    return out, opt_neurons.analyze(model, GOOD_TOKENS, progress=False, out=out)


FILES = ["neurons.parquet", "layers.parquet", "tokens.parquet", "positions.parquet", "metadata.json"]


@settings(max_examples=40 * SCALE, **SETTINGS)
@given(name=st.sampled_from(FILES), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                                                    max_size=3),
       cut=st.one_of(st.none(), st.floats(0, 1)))  # fmt: skip
def test_fuzz_load_damaged_run_folders(saved, tmp_path_factory, name, flips, cut):
    tried("load")
    folder, original = saved
    d = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(folder, d)
    b = bytearray((d / name).read_bytes())
    for where, xor in flips:
        b[int(where * len(b))] ^= xor
    if cut is not None:
        b = b[: int(cut * len(b))]
    (d / name).write_bytes(bytes(b))
    a = call(opt_neurons.load, d)
    if a is not None and not flips and cut is None:
        for t in ("neurons", "layers", "tokens", "positions"):
            assert getattr(a, t).equals(getattr(original, t))
    if a is not None:  # whatever loads must also report or fail cleanly
        from opt_neurons.report import write_report

        call(write_report, a, d / "report", model=None)


# ------------------------------------------------------------------------------------------ CLI

FLAGS = ["--tokens", "--detail-tokens", "--seq-len", "--batch-size", "--dtype", "--ngram-capacity", "--execution",
         "--block-size", "--checkpoint-every", "--coverage", "--max-tokens", "--mi-threshold", "--low", "--data",
         "--revision", "--out", "--no-progress", "--report"]  # fmt: skip
words = st.one_of(st.sampled_from(FLAGS), st.sampled_from(["0", "-1", "2", "1e9", "nan", "x", "", "--", "memory"]),
                  st.text(max_size=6))  # fmt: skip


@settings(max_examples=80 * SCALE, **SETTINGS)
@given(command=st.sampled_from(["analyze", "report", "compare", "demo", "show", ""]), argv=st.lists(words, max_size=6))
def test_fuzz_cli(tmp_path_factory, command, argv, capsys):
    tried("cli")
    if command == "demo":
        argv = [*argv, "--tokens", "0"]  # never a whole demo run: a refused option, or argparse's usage error
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cli"))  # default output folders land here
    try:
        code = main([command, "no-such-org/no-such-model", *argv] if command == "analyze" else [command, *argv])
    except SystemExit as e:  # argparse: usage error (2) or --help/--version (0)
        code = e.code
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err


def test_zz_report_what_the_fuzzers_tried():
    """Not a check: prints how many inputs each fuzzer tried (pytest -s shows it), for the closing note."""
    print(f"\nfuzz inputs tried: {TRIED}")

"""The compiled extension against its stub (_core.pyi), and the thresholds' defaults coming from the core."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np

from opt_neurons import NeuronStats, Thresholds, _core

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_stub", ROOT / "scripts" / "check_stub.py")
check_stub = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_stub)


def test_stub_matches_the_extension():
    assert check_stub.problems(_core, check_stub.STUB.read_text()) == []


def test_stub_check_finds_what_the_stub_lacks_or_gets_wrong():
    stub = check_stub.STUB.read_text()
    # A method of the binding without a stub (here: the stub's line removed).
    no_merge_file = stub.replace("    def merge_file(self, path: str | os.PathLike[str]) -> None: ...\n", "")
    assert no_merge_file != stub
    assert check_stub.problems(_core, no_merge_file) == [
        "NeuronStats.merge_file: exposed by the extension (method) but missing from the stub"
    ]
    renamed = stub.replace(
        "def position_counts(self, layer: int, neuron: int)", "def position_counts(self, layer: int, n: int)"
    )
    assert [p.split(":")[0] for p in check_stub.problems(_core, renamed)] == ["NeuronStats.position_counts"]
    extra = stub + "\ndef gone() -> None: ...\n"
    assert check_stub.problems(_core, extra) == ["gone: in the stub but not exposed by the extension"]
    wrong_default = stub.replace("coverage: float | None = None", "coverage: float = 0.95")
    assert [p.split(":")[0] for p in check_stub.problems(_core, wrong_default)] == ["NeuronStats.finalize"]
    no_constant = stub.replace("STATE_FORMAT_VERSION: int\n", "")
    assert check_stub.problems(_core, no_constant) == [
        "STATE_FORMAT_VERSION: exposed by the extension (constant) but missing from the stub"
    ]


def test_thresholds_take_the_core_defaults():
    core = _core.DEFAULT_THRESHOLDS
    fields = {f.name: f.default for f in dataclasses.fields(Thresholds)}
    assert set(core) == set(Thresholds().core_kwargs()) == set(fields) - {"baseline_draws", "seed", "low_support_count"}
    for name, value in core.items():
        assert fields[name] == value and type(fields[name]) is type(value), name
    # METHOD.md's values, for a reader of this test.
    assert (core["coverage"], core["max_tokens"], core["max_trigrams"], core["mi_threshold"]) == (0.95, 5, 50, 0.05)
    # The core's finalize without thresholds uses the same defaults as with Thresholds() spelled out.
    s = NeuronStats(1, 70, 20, 8)
    rng = np.random.default_rng(1)
    s.update(0, rng.integers(0, 2**63, (32, 2), dtype=np.uint64), rng.integers(0, 20, 32), np.arange(32) % 8)
    bare, spelled = s._core.finalize(), s._core.finalize(**Thresholds().core_kwargs())
    assert bare.keys() == spelled.keys()
    for k in bare:
        np.testing.assert_array_equal(np.asarray(bare[k]), np.asarray(spelled[k]))

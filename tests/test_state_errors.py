"""NeuronStats errors: each kind of problem is its own class under OptNeuronsError, with a one-line message
naming the problem and the fix; refused calls change nothing; saved states are checked whole."""

from __future__ import annotations

import numpy as np
import pytest

import opt_neurons
from opt_neurons import (
    DataError,
    IncompatibleStateError,
    NeuronStats,
    OptionError,
    OptNeuronsError,
    ShapeError,
    StateError,
    StateFileError,
    StateIOError,
    UnusableStateError,
    _core,
)


def tiny(**kw) -> NeuronStats:
    return NeuronStats(2, 65, 10, 8, **kw)


def fed() -> NeuronStats:
    s = tiny()
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**63, size=(8, 2), dtype=np.uint64)
    t, p = np.arange(8, dtype=np.uint32) % 10, np.arange(8, dtype=np.uint32)
    s.update_layers({0: bits, 1: bits}, t, p)
    return s


def test_classes_form_one_tree():
    for cls in (OptionError, DataError, IncompatibleStateError, ShapeError, StateError, StateFileError, StateIOError,
                UnusableStateError):  # fmt: skip
        assert issubclass(cls, OptNeuronsError) and issubclass(cls, ValueError)
        assert cls.__name__ in opt_neurons.__all__
    assert issubclass(ShapeError, DataError)
    assert issubclass(StateIOError, OSError) and issubclass(StateIOError, StateError)
    assert all(issubclass(c, StateError) for c in (IncompatibleStateError, StateFileError, UnusableStateError))


@pytest.mark.parametrize(
    "args, kw, match",
    [
        ((-1, 65, 10, 8), {}, r"^n_layers must not be negative, got -1$"),
        ((2, -65, 10, 8), {}, r"^n_neurons must not be negative"),
        ((2, 65, -10, 8), {}, r"^vocab_size must not be negative"),
        ((2, 65, 10, -8), {}, r"^max_positions must not be negative"),
        ((2, 65, 10, 8), {"ngram_capacity": -1}, r"^ngram_capacity must not be negative"),
        ((2, 65, 10, 8), {"ngram_capacity": 0}, r"ngram_capacity must be at least 1"),
        ((2, 65, 10, 8), {"bos_token_id": -2}, r"^bos_token_id must not be negative"),
        ((2, 65, 10, 8), {"bos_token_id": 2**40}, r"bos_token_id must fit in 32 bits"),
        ((2, 65.0, 10, 8), {}, r"^n_neurons must be an integer, got float$"),
        ((2, 65, 10, 2**70), {}, r"^max_positions must fit in 64 bits"),
        ((0, 65, 10, 8), {}, r"needs positive n_layers"),
        ((2, 65, 10, 2**40), {}, r"beyond what NeuronStats supports"),
    ],
)
def test_bad_settings_are_config_errors(args, kw, match):
    with pytest.raises(OptionError, match=match):
        NeuronStats(*args, **kw)


def test_bad_calls_are_named_and_change_nothing():
    s = fed()
    before = s.to_bytes()
    bits, t, p = np.zeros((4, 2), np.uint64), np.zeros(4, np.uint32), np.arange(4, dtype=np.uint32)
    cases = [
        (DataError, r"^layer must not be negative, got -1$", lambda: s.update(-1, bits, t, p)),
        (DataError, r"^layer must fit in 64 bits", lambda: s.update(2**64, bits, t, p)),
        (DataError, r"^layer must be an integer, got str$", lambda: s.update("0", bits, t, p)),
        (DataError, r"^layer must not be negative", lambda: s.update_activity(-3, bits)),
        (DataError, r"^layer must not be negative", lambda: s.update_layers({0: bits, -1: bits}, t, p)),
        (DataError, r"^layer must not be negative", lambda: s.add_activity_counts({-1: np.zeros(65, int)}, 4)),
        (DataError, r"^n_rows must not be negative", lambda: s.add_activity_counts({0: np.zeros(65, int)}, -4)),
        (DataError, r"^layer must not be negative", lambda: s.position_counts(-1, 0)),
        (DataError, r"^neuron must not be negative", lambda: s.token_counts(0, -1)),
        (DataError, r"neuron 65 out of range", lambda: s.position_counts(0, 65)),
        (DataError, r"layer 2 out of range", lambda: s.update(2, bits, t, p)),
        (DataError, r"token id 10 is outside the vocabulary", lambda: s.update(0, bits, t + 10, p)),
        (DataError, r"token_ids must hold integers, got dtype float64", lambda: s.update(0, bits, t + 0.5, p)),
        (DataError, r"bits must be uint64 or int64 words", lambda: s.update(0, bits.astype(np.float32), t, p)),
        (ShapeError, r"bits must be 2-D", lambda: s.update(0, bits[0], t, p)),
        (ShapeError, r"bits must be an array", lambda: s.update(0, [[1, 2], [3]], t, p)),
        (ShapeError, r"1 words per row but 65 neurons need 2", lambda: s.update(0, bits[:, :1], t, p)),
        (ShapeError, r"must have the same length", lambda: s.update(0, bits, t[:3], p)),
        (IncompatibleStateError, r"cannot merge a NeuronStats into itself", lambda: s.merge(s)),
        (IncompatibleStateError, r"merge takes a NeuronStats, got int", lambda: s.merge(3)),
        (IncompatibleStateError, r"different settings", lambda: s.merge(tiny(bos_token_id=None))),
    ]
    for cls, match, call in cases:
        with pytest.raises(cls, match=match) as e:
            call()
        assert "\n" not in str(e.value)
        assert s.to_bytes() == before, match
    # The core raises the same classes when called directly.
    with pytest.raises(DataError, match=r"^layer must not be negative"):
        s._core.update(-1, bits, t, p)
    with pytest.raises(IncompatibleStateError, match=r"into itself"):
        s._core.merge(s._core)


def test_state_files_are_checked_whole(tmp_path):
    s = fed()
    good = s.to_bytes()
    assert good[:8] == b"OPTNST05" and _core.STATE_FORMAT_VERSION == 5 and _core.STATE_MAGIC == b"OPTNST"
    f = tmp_path / "state.bin"
    for data, match in [
        (b"", r"the file is empty"),
        (good[:7], r"not a NeuronStats state \(bad header\)"),
        (good[:-1], r"checksum does not match"),
        (good + b"\0", r"checksum does not match"),
        (good[:100] + bytes([good[100] ^ 1]) + good[101:], r"checksum does not match"),
        # A checkpoint of format 03 (no trailer) or 04 (no per-source counts) names its version.
        (b"OPTNST03" + good[8:-12], r"format version 3, but this opt_neurons reads version 5"),
        (b"OPTNST04" + good[8:], r"format version 4, but this opt_neurons reads version 5"),
    ]:
        with pytest.raises(StateFileError, match=match) as e:
            NeuronStats.from_bytes(data)
        assert "save the state again" in str(e.value) and "\n" not in str(e.value)
        f.write_bytes(data)
        for call in (lambda: NeuronStats.load(f), lambda: tiny().merge_file(f)):
            with pytest.raises(StateFileError, match=match) as e:
                call()
            assert str(f) in str(e.value) and "delete the checkpoint folder to start over" in str(e.value)
    target = fed()
    before = target.to_bytes()
    with pytest.raises(StateFileError):
        target.merge_file(f)
    assert target.to_bytes() == before
    missing = tmp_path / "missing.bin"
    with pytest.raises(StateIOError, match=r"cannot open .*missing\.bin") as e:
        NeuronStats.load(missing)
    assert isinstance(e.value, OSError)
    with pytest.raises(StateIOError, match=r"cannot create"):
        s.save(tmp_path / "no-such-dir" / "state.bin")
    f.write_bytes(good)
    target.merge_file(f)
    assert target.rows == 2 * s.rows


def test_damaged_or_old_checkpoints_are_refused_with_the_fix(tmp_path):
    """A run's checkpoint whose state was damaged, or written by format 03 (before the checksum) or 04 (before
    the per-source counts), is refused
    by name, saying to delete the checkpoint folder, instead of resuming from wrong counts."""
    from opt_neurons import checkpoint
    from opt_neurons.data import TokenData
    from opt_neurons.schedule import Cursor

    data = TokenData(np.zeros((4, 4), np.int64), np.full(4, 4), detail=4)
    stats = NeuronStats(1, 64, 10, 4)
    stats.update(0, np.ones((8, 1), np.uint64), np.arange(8) % 10, np.arange(8) % 4)
    fp = {"run": 1}
    checkpoint.save(tmp_path, stats, Cursor(2, 0), fp)
    state = tmp_path / checkpoint.DIR / "state.bin"
    good = state.read_bytes()
    assert checkpoint.load(tmp_path, fp, data)[0].rows == 8
    for raw, match in [(good[:50] + bytes([good[50] ^ 0x10]) + good[51:], r"checksum does not match"),
                       (b"OPTNST03" + good[8:-12], r"format version 3"), (b"OPTNST04" + good[8:], r"format version 4"),
                       (b"", r"empty")]:  # fmt: skip
        state.write_bytes(raw)
        with pytest.raises(StateFileError, match=match) as e:
            checkpoint.load(tmp_path, fp, data)
        assert str(state) in str(e.value) and "delete the checkpoint folder to start over" in str(e.value)


def test_per_layer_calls_take_a_dict():
    s = tiny()
    bits, t = np.zeros((4, 2), np.uint64), np.zeros(4, np.uint32)
    with pytest.raises(ShapeError, match=r"update_layers takes a dict \{layer: bits\}, got list"):
        s.update_layers([bits], t, t)
    with pytest.raises(ShapeError, match=r"add_activity_counts takes a dict \{layer: counts\}, got tuple"):
        s.add_activity_counts((np.zeros(65, int),), 4)

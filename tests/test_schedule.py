"""The order sequences run in (schedule.py): every batch once, each part in data order, and the
progress cursors and token counts that checkpoints and the progress bar read off it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from opt_neurons.data import TokenData
from opt_neurons.schedule import Cursor, blocks, cursor_of, interleaved, tokens_done


def data(lengths, detail):
    lengths = np.asarray(lengths)
    return TokenData(np.zeros((len(lengths), max(lengths)), np.int64), lengths, detail=detail)


@pytest.mark.parametrize("pattern", [[False], [True], [False, True, True], [True, False]])
@pytest.mark.parametrize("detail", [None, 1, 4, 7])
def test_every_batch_once_each_part_in_order(pattern, detail):
    d = data([4, 4, 4, 3, 3, 4, 4], detail)
    busy = itertools.cycle(pattern)
    start = Cursor(1, 1) if detail not in (None, 7) else Cursor(1, 0)
    got = list(interleaved(d, start, 2, lambda: next(busy)))
    n_detail = 7 if detail is None else detail
    first = [(b, e) for b, e, _ in got if e <= n_detail]
    rest = [(b, e) for b, e, _ in got if b >= n_detail]
    assert len(first) + len(rest) == len(got)  # no batch spans both parts
    seqs = [i for b, e, _ in got for i in range(b, e)]
    assert sorted(seqs) == [*range(start.detail, n_detail), *range(n_detail + start.other, 7)]
    assert [b for b, _ in first] == sorted(b for b, _ in first) and [b for b, _ in rest] == sorted(b for b, _ in rest)
    for b, e, _ in got:  # a batch: sequences of one length, at most batch_size
        assert e - b <= 2 and len(set(d.lengths[b:e])) == 1
    at = start
    for _b, e, done in got:  # the cursor after a batch: both prefixes it completes
        at = Cursor(e, at.other) if e <= n_detail else Cursor(at.detail, e - n_detail)
        assert done == at
    assert got[-1][2] == Cursor(n_detail, 7 - n_detail)
    if pattern == [True] and 0 < n_detail < 7:  # a busy host: every other batch runs first
        assert got[0][0] >= n_detail


def test_blocks_run_in_data_order():
    d = data([4] * 7, 3)
    got = blocks(d, Cursor(), 2, 4)
    assert [[(b, e) for b, e, _ in block] for block in got] == [[(0, 2), (2, 3)], [(3, 5), (5, 7)]]
    assert [block[-1][2] for block in got] == [Cursor(3, 0), Cursor(3, 4)]


def test_cursor_round_trips_through_row_counts():
    d = data([4, 3, 4, 2, 4], 2)
    before = d.tokens_before()
    for k in range(3):
        for m in range(4):
            at = Cursor(k, m)
            rows, detail_rows = tokens_done(d, at), int(before[k])
            assert rows == detail_rows + int(before[2 + m] - before[2])
            assert cursor_of(d, rows, detail_rows) == at
    assert cursor_of(d, 5, 5) is None  # 5 tokens are no whole number of detail sequences
    assert cursor_of(d, 8, 7) is None  # 1 token of the others is neither


@pytest.mark.parametrize("detail", [None, 1, 3, 10])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_split_each_part_evenly(detail, world):
    from opt_neurons.distributed import shard

    d = data([4, 4, 3, 4, 4, 2, 4, 4, 4, 4], detail)
    d.tokens = np.arange(40).reshape(10, 4)  # sequence i is row i: recognisable in a shard
    n_detail = 10 if detail is None else detail
    shards = [shard(d, r, world) for r in range(world)]
    got = sorted(int(s.tokens[i, 0]) // 4 for s in shards for i in range(len(s.lengths)))
    assert got == list(range(10))  # every sequence in exactly one shard
    for s in shards:
        rows = s.tokens[:, 0] // 4
        own_detail = rows[: (len(rows) if s.detail is None else s.detail)]
        assert (own_detail < n_detail).all() and (rows[len(own_detail) :] >= n_detail).all()
        assert np.array_equal(s.lengths, d.lengths[rows])
        assert (
            abs(len(own_detail) - n_detail / world) < 1
            and abs(len(rows) - len(own_detail) - (10 - n_detail) / world) < 1
        )

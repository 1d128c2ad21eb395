"""Which sequences the forward pass runs, and in what order.

The data's first `detail` sequences get every statistic: their bits go to the host, whose counting
is slower than a GPU's forward pass. The others (the paper's extra tokens for dead neurons) get
activation counts only, summed on the device. Run one after the other, the device would idle while
the host counts the detail; interleaved, it runs the other sequences while the host counts, so a
run costs about max(forward, counting) instead of their sum.

The tables do not depend on the order: detail batches are still counted in data order (every
summary sees the same adds), and activation counts are sums. Progress is two prefixes, one of
each part (`Cursor`), which the state's own row counts give back on resume.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .data import TokenData


@dataclass(frozen=True)
class Cursor:
    """Sequences counted: the first `detail` of the detail part and the first `other` of the others."""

    detail: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return self.detail + self.other


Batch = tuple[int, int, Cursor]  # sequences [begin, end), and the progress once they are counted


def batches(data: TokenData, begin: int, end: int, batch_size: int) -> list[tuple[int, int]]:
    """[begin, end) ranges of consecutive sequences of equal length in [begin, end), at most
    batch_size each."""
    out = []
    i = begin
    while i < end:
        j = i + 1
        while j < end and j - i < batch_size and data.lengths[j] == data.lengths[i]:
            j += 1
        out.append((i, j))
        i = j
    return out


def interleaved(data: TokenData, start: Cursor, batch_size: int, host_busy: Callable[[], bool]) -> Iterator[Batch]:
    """Detail batches in order, with batches of the other sequences in between whenever
    `host_busy()`: the host has a detail batch waiting already (`lambda: False`: all detail first)."""
    d = data.n_detail
    detail = deque(batches(data, start.detail, d, batch_size))
    other = deque(batches(data, d + start.other, len(data.lengths), batch_size))
    at = start
    while detail or other:
        if detail and not (other and host_busy()):
            begin, end = detail.popleft()
            at = Cursor(end, at.other)
        else:
            begin, end = other.popleft()
            at = Cursor(at.detail, end - d)
        yield begin, end, at


def blocks(data: TokenData, start: Cursor, batch_size: int, block_size: int) -> list[list[Batch]]:
    """Batches in data order grouped into blocks of at most block_size sequences (at least one batch)."""
    out: list[list[Batch]] = []
    for b in interleaved(data, start, batch_size, lambda: False):
        if out and b[1] - out[-1][0][0] <= block_size:
            out[-1].append(b)
        else:
            out.append([b])
    return out


def tokens_done(data: TokenData, at: Cursor, before: np.ndarray | None = None) -> int:
    """Tokens of the sequences `at` covers (`before`: data.tokens_before(), if at hand)."""
    before = data.tokens_before() if before is None else before
    d = data.n_detail
    return int(before[at.detail] + before[d + at.other] - before[d])


def cursor_of(data: TokenData, rows: int, detail_rows: int) -> Cursor | None:
    """The progress a state of `rows` rows, `detail_rows` of them with every statistic, stands for;
    None when those are no whole numbers of this data's sequences of each part."""
    before = data.tokens_before()
    d = data.n_detail
    k = np.flatnonzero(before[: d + 1] == detail_rows)
    m = np.flatnonzero(before[d:] - before[d] == rows - detail_rows)
    if not len(k) or not len(m):
        return None
    return Cursor(int(k[0]), int(m[0]))

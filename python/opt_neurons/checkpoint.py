"""Accumulator checkpoints: an interrupted run resumes where it stopped, counting nothing twice.

A checkpoint is the NeuronStats state plus the number of sequences it holds, tied to the run's
model and data by a fingerprint; files are replaced atomically (write, then rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import DataError
from .stats import NeuronStats

DIR = "checkpoint"


def _paths(out: Path, name: str) -> tuple[Path, Path]:
    d = out / name
    return d / "state.bin", d / "progress.json"


def save(out: Path, stats: NeuronStats, sequences_done: int, fingerprint: dict, name: str = DIR) -> None:
    state, progress = _paths(out, name)
    state.parent.mkdir(parents=True, exist_ok=True)
    tmp = state.with_suffix(".tmp")
    stats.save(tmp)
    os.replace(tmp, state)
    tmp = progress.with_suffix(".tmp")
    tmp.write_text(json.dumps({"sequences_done": sequences_done, "fingerprint": fingerprint}, sort_keys=True))
    os.replace(tmp, progress)


def load(out: Path, fingerprint: dict, rows_before: np.ndarray, name: str = DIR) -> tuple[NeuronStats, int] | None:
    """The saved state and the number of sequences it holds, if a checkpoint of this same run exists.
    rows_before[k]: the rows (tokens) of the run's first k sequences."""
    state, progress = _paths(out, name)
    if not (state.exists() and progress.exists()):
        return None
    p = json.loads(progress.read_text())
    if p.get("fingerprint") != json.loads(json.dumps(fingerprint, sort_keys=True)):
        return None
    stats = NeuronStats.load(state)
    # The state's own row count says how many sequences it holds: save() replaces the state, then
    # progress.json, so a run killed between the two leaves a progress count that lags the state.
    hits = np.flatnonzero(rows_before == stats.rows)
    if not len(hits):
        raise DataError(f"the checkpoint in {state.parent} holds {stats.rows} tokens, which is no whole number "
                        f"of this run's sequences: delete that folder to start over")  # fmt: skip
    return stats, int(hits[0])


def clear(out: Path, name: str = DIR) -> None:
    state, progress = _paths(out, name)
    for f in (state, progress):
        f.unlink(missing_ok=True)
    if state.parent.exists() and not any(state.parent.iterdir()):
        state.parent.rmdir()

"""Accumulator checkpoints: an interrupted run resumes where it stopped, counting nothing twice.

A checkpoint is the NeuronStats state plus the number of sequences it holds, tied to the run's
model and data by a fingerprint; files are replaced atomically (write, then rename).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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


def load(out: Path, fingerprint: dict, name: str = DIR) -> tuple[NeuronStats, int] | None:
    """The saved state and its sequence count, if a checkpoint of this same run exists."""
    state, progress = _paths(out, name)
    if not (state.exists() and progress.exists()):
        return None
    p = json.loads(progress.read_text())
    if p.get("fingerprint") != json.loads(json.dumps(fingerprint, sort_keys=True)):
        return None
    return NeuronStats.load(state), int(p["sequences_done"])


def clear(out: Path, name: str = DIR) -> None:
    state, progress = _paths(out, name)
    for f in (state, progress):
        f.unlink(missing_ok=True)
    if state.parent.exists() and not any(state.parent.iterdir()):
        state.parent.rmdir()

"""Accumulator checkpoints: an interrupted run resumes where it stopped, counting nothing twice.

A checkpoint is the NeuronStats state plus the progress it holds (`schedule.Cursor`), tied to the
run's model and data by a fingerprint; files are replaced atomically (write, then rename).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .data import TokenData
from .errors import CheckpointError, DataError
from .outdir import write_atomically
from .schedule import Cursor, cursor_of
from .stats import NeuronStats

DIR = "checkpoint"


def name_for(rank: int, world: int) -> str:
    """The checkpoint folder of one process of a run (each rank of a data-parallel run keeps its own)."""
    return DIR if world == 1 else f"{DIR}-rank{rank}"


def _paths(out: Path, name: str) -> tuple[Path, Path]:
    d = out / name
    return d / "state.bin", d / "progress.json"


def save(out: Path, stats: NeuronStats, done: Cursor, fingerprint: dict, name: str = DIR, examples: Any = None) -> None:
    state, progress = _paths(out, name)
    state.parent.mkdir(parents=True, exist_ok=True)
    if examples is not None:  # before the state, keeping the previous one (example_tracker.load)
        examples.save(state.parent)
    write_atomically(state, stats.save)
    # For people reading the folder: resume goes by the state's own rows (see load).
    progress_json = json.dumps({"sequences_done": done.total, "detail_sequences_done": done.detail,
                                "other_sequences_done": done.other, "fingerprint": fingerprint}, sort_keys=True)  # fmt: skip
    write_atomically(progress, lambda tmp: tmp.write_text(progress_json))


def load(out: Path, fingerprint: dict, data: TokenData, name: str = DIR) -> tuple[NeuronStats, Cursor] | None:
    """The saved state and the progress it holds, if a checkpoint of this same run exists."""
    state, progress = _paths(out, name)
    if not (state.exists() and progress.exists()):
        return None
    try:
        p = json.loads(progress.read_text())
        theirs = p["fingerprint"]
        if not isinstance(theirs, dict):
            raise TypeError("fingerprint is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{progress} is malformed ({e}): delete the folder {state.parent} to start over"
        ) from None
    mine = json.loads(json.dumps(fingerprint, sort_keys=True))
    if theirs != mine:
        differs = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        print(f"opt-neurons: the checkpoint in {state.parent} is of another run ({', '.join(differs)} "
              f"differ{'s' if len(differs) == 1 else ''}): not resumed", file=sys.stderr)  # fmt: skip
        return None
    stats = NeuronStats.load(state)
    # The state's own row counts say what it holds: save() replaces the state, then progress.json,
    # so a run killed between the two leaves a progress file that lags the state.
    at = cursor_of(data, stats.rows, stats.detail_rows)
    if at is None:
        raise DataError(f"the checkpoint in {state.parent} holds {stats.rows} tokens ({stats.detail_rows} with every "
                        f"statistic), which is no whole number of this run's sequences: delete that folder to start "
                        f"over")  # fmt: skip
    return stats, at


def set_aside(out: Path, name: str = DIR) -> None:
    """A checkpoint folder this run does not resume (another run's) is renamed rather than overwritten."""
    folder = out / name
    if folder.is_dir() and any(folder.iterdir()):
        aside = folder.with_name(f"{folder.name}-unused-{time.strftime('%Y%m%dT%H%M%S')}")
        folder.rename(aside)
        print(f"opt-neurons: moved the unused checkpoint to {aside} (delete it if not needed)", file=sys.stderr)


def clear(out: Path, name: str = DIR) -> None:
    state, progress = _paths(out, name)
    for f in (state, progress, state.parent / "examples.bin", state.parent / "examples.prev.bin"):
        f.unlink(missing_ok=True)
    if state.parent.exists() and not any(state.parent.iterdir()):
        state.parent.rmdir()

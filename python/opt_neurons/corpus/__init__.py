"""Bundled default text corpus: prose, Python code, math Q/A and technical docs.

Each source is a gzipped JSONL file beside this module, one {"text", "source"}
object per line; see SOURCES.md for origins, licences and checksums. The files
are built by scripts/build_corpus.py (developer tool, not run at runtime).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

SOURCES: tuple[str, ...] = ("prose", "code", "math", "docs")

_DIR = Path(__file__).resolve().parent

SourceSel = Optional[Union[str, Iterable[str]]]


def _select(sources: SourceSel) -> list[str]:
    """Normalise a selection (None = all, a name, or names) to SOURCES order."""
    if sources is None:
        return list(SOURCES)
    wanted = {sources} if isinstance(sources, str) else set(sources)
    unknown = wanted.difference(SOURCES)
    if unknown:
        raise ValueError(f"unknown corpus source(s) {sorted(unknown)}; choose from {SOURCES}")
    if not wanted:
        raise ValueError("empty corpus source selection")
    return [s for s in SOURCES if s in wanted]


def source_path(name: str) -> Path:
    """Path of the data file for one source."""
    return _DIR / f"{_select(name)[0]}.jsonl.gz"


def _read(name: str) -> Iterator[str]:
    with gzip.open(source_path(name), "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def iter_documents(sources: SourceSel = None) -> Iterator[tuple[str, str]]:
    """Yield (source_name, text), one document per source in turn (round-robin,
    SOURCES order); an exhausted source drops out. Deterministic, so any prefix
    of the stream is a reproducible mix of the selected sources."""
    active = [(name, _read(name)) for name in _select(sources)]
    while active:
        still = []
        for name, it in active:
            text = next(it, None)
            if text is not None:
                still.append((name, it))
                yield name, text
        active = still


def content_hash(sources: SourceSel = None) -> str:
    """sha256 hex over the raw bytes of the selected data files, in SOURCES
    order, for recording which corpus a run used."""
    h = hashlib.sha256()
    for name in _select(sources):
        h.update(source_path(name).read_bytes())
    return h.hexdigest()

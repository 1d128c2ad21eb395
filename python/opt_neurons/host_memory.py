"""Host memory the statistics may need, against what the machine has free: a warning before a long run
rather than the kernel killing the process hours into it."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .stats import NeuronStats

# The data's own bigram and trigram tables: at most one new entry of each per token (hash-map buckets of
# 17 bytes, 8/7 per entry, up to half empty after growing).
DATA_BYTES_PER_TOKEN = 80


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def statistics_bound(stats: NeuronStats, n_tokens: int, examples: Any = None) -> int:
    """The most the statistics can take: every neuron live with full summaries, plus the data's tables, plus
    the example sample's state (`examples`: an ExampleTracker's core, or None when examples are off)."""
    return stats.memory_bound() + DATA_BYTES_PER_TOKEN * n_tokens + (examples.memory_bound() if examples else 0)


def warn_if_short(stats: NeuronStats, n_tokens: int, available: int | None, examples: Any = None) -> None:
    bound = statistics_bound(stats, n_tokens, examples)
    if available is None or bound <= available:
        return
    c = stats.config
    warnings.warn(
        f"opt-neurons: the statistics of {c['n_layers']} x {c['n_neurons']} neurons may need up to "
        f"{bound / 1e9:.1f} GB of host memory (every neuron live, every summary full at ngram_capacity "
        f"{c['ngram_capacity']}{', with the examples' if examples else ''}) but {available / 1e9:.1f} GB are available. Lower ngram_capacity (e.g. "
        f"{max(c['ngram_capacity'] // 2, 1)} halves the summaries) or free memory; with out= set, a killed run "
        f"resumes from its last checkpoint.",
        RuntimeWarning,
        stacklevel=3,
    )

"""The examples' cost per layer and batch on the CPU, in isolation: `ExampleTracker.observe` + `commit` of
one layer's (rows, neurons) activations, on the host path (the Rust core's `scan_batch` over the firing
entries) and on the device path run on the CPU (dense sort keys and a top k over every row), alternating,
in one process. The first batch of a layer (every firing entry is a candidate for the top k) and later
ones (only entries at or above the committed k-th value are) are timed apart. The compare `x > 0` is not
counted: the capture hook computes it once for everything (bits, counts, examples).

    python benches/bench_examples_scan.py                       # 4096 x 3072 (OPT-125m, 2 x 2048 tokens)
    python benches/bench_examples_scan.py --rows 4096 --neurons 16384 --density 0.05
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from opt_neurons.example_tracker import ExampleTracker  # noqa: E402

from _common import machine, record  # noqa: E402


def one_batch(tracker: ExampleTracker, x: torch.Tensor, fired: torch.Tensor, first: int) -> float:
    tracker.set_rows(np.arange(len(x), dtype=np.uint32) % 2048, first_sequence=first)
    t0 = time.perf_counter()
    tracker.observe(0, x, len(x), fired)
    tracker.commit(len(x))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--neurons", type=int, default=3072)
    ap.add_argument("--density", type=float, default=0.023, help="fraction of entries > 0 (OPT-like: ~2%%)")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    shift = float(np.quantile(rng.standard_normal(100_000), 1 - a.density))
    batches = [torch.from_numpy(rng.standard_normal((a.rows, a.neurons), dtype=np.float32) - shift) for _ in range(3)]
    fired = [x > 0 for x in batches]
    times: dict[str, dict[str, list[float]]] = {p: {"first": [], "later": []} for p in ("host", "device")}
    for r in range(a.rounds):
        for path in ("host", "device") if r % 2 == 0 else ("device", "host"):
            ExampleTracker.on_host = staticmethod(lambda x, p=path: p == "host")  # type: ignore[method-assign]
            tracker = ExampleTracker(1, a.neurons, a.k, 0)
            times[path]["first"].append(one_batch(tracker, batches[0], fired[0], 0))
            for i in (1, 2):
                times[path]["later"].append(one_batch(tracker, batches[i], fired[i], 2 * i))
    rows = [[path, a.rows, a.neurons, f"{np.mean([f.float().mean().item() for f in fired]):.3f}", a.k,
             f"{1e3 * statistics.median(t['first']):.1f}", f"{1e3 * statistics.median(t['later']):.1f}"]
            for path, t in times.items()]  # fmt: skip
    record("examples_scan", ["path", "rows", "neurons", "density", "k", "first batch ms (median)",
                             "later batch ms (median)"], rows, machine_info=machine(),
           notes=f"ExampleTracker.observe + commit of one layer's batch on the CPU, torch threads "
                 f"{torch.get_num_threads()}, medians of {a.rounds} alternating rounds.")  # fmt: skip


if __name__ == "__main__":
    main()

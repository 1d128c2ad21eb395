"""Device-to-host copy bandwidth, and the capture's cost (bit packing, copies, the worker's handling of
a block's bits) per block size, side by side in rounds on one GPU: what limits `capture only / bare` in
bench_gpu.py. "joined" re-creates the capture before the bits were handed over in chunks: the worker
joined each layer's block of bits into one array first. Needs CUDA.

    python benches/bench_capture_gpu.py --shapes 125m,6.7b
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import opt_neurons.capture as capture  # noqa: E402
from bench_gpu import SHAPES, NullStats, bare, capture_only  # noqa: E402

from _common import calibrate_density, random_opt, zipf_tokens  # noqa: E402


def copy_rate(n_bytes: int, pinned: bool, reps: int = 5) -> float:
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty(n_bytes, dtype=torch.uint8, pin_memory=pinned)
    dst.copy_(src, non_blocking=pinned)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src, non_blocking=pinned)
    torch.cuda.synchronize()
    return reps * n_bytes / (time.perf_counter() - t0) / 1e9


count_nothing = NullStats.update_layers
block_rows = capture.BLOCK_ROWS


def join_chunks(self, bits_by_layer: dict, *_: object) -> None:
    """What the counting thread did first before the bits were handed over in chunks."""
    for chunks in bits_by_layer.values():
        np.concatenate(chunks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="125m,6.7b")
    ap.add_argument("--seqs", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    for mb in (4, 36, 512):
        print(f"D2H {mb} MiB: pinned {copy_rate(mb << 20, True):.1f} GB/s, pageable {copy_rate(mb << 20, False):.1f} GB/s",
              flush=True)  # fmt: skip
    variants = {  # (block rows, join each layer's chunks first)
        "blocks of 16384 rows": (16384, False),
        "blocks, joined": (16384, True),
        "a block per batch": (1, False),
    }
    for name in a.shapes.split(","):
        model = random_opt(SHAPES[name], dtype=torch.float16, device="cuda")
        tokens = zipf_tokens(a.seqs, np.random.default_rng(0), seq_len=2048, vocab=model.config.vocab_size)
        calibrate_density(model, torch.from_numpy(tokens[:1]).cuda(), 0.05)
        bare(model, tokens[:4], 4, torch.device("cuda"))
        capture_only(model, tokens[:8], 4, torch.device("cuda"))
        for r in range(a.rounds):
            b = bare(model, tokens, 4, torch.device("cuda"))
            cells = []
            for label, (rows, join) in variants.items():
                capture.BLOCK_ROWS = rows
                NullStats.update_layers = join_chunks if join else count_nothing
                try:
                    c = capture_only(model, tokens, 4, torch.device("cuda"))
                finally:
                    capture.BLOCK_ROWS, NullStats.update_layers = block_rows, count_nothing
                cells.append(f"{label} {100 * b / c:.0f}%")
            print(f"{name} round {r}: bare {tokens.size / b:,.0f} tok/s; capture only / bare: " + ", ".join(cells),
                  flush=True)  # fmt: skip
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

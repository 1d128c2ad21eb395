"""Shared helpers of the benchmarks: synthetic data, machine description, tables, result files.

Every benchmark prints a markdown table and writes it, with the machine, date and exact command, to
`benches/results/<name>.json` (replacing that benchmark's previous result for the same machine and
arguments); `benches/RESULTS.md` quotes them.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VOCAB = 50272  # OPT
T = 2048
BOS = 2


# Layout of the core's accumulators (rust/core/src/stats/, count_table.rs, summary.rs, position_counts.rs), for the memory
# models of bench_memory.py and bench_66b_memory.py. Checked against `NeuronStats.memory_bytes()` there.
CHUNK = 256  # neurons per position chunk (PositionChunk: u16 count per (position, neuron), position-major)
ACC_BYTES = 296  # boxed NeuronAcc: n_active + 3 Summary structs (CountTable 80 + total + slack = 96 each)
GROUP = 16  # a CountTable has one tag byte per slot and GROUP more
PTR_BYTES = 8  # Option<Box<NeuronAcc>> per neuron, dead or alive


def chunk_bytes(max_positions: int = T) -> int:
    """One PositionChunk (allocated when any of its 256 neurons first fires): 2 bytes per (position,
    neuron); its overflow table stays empty while no count passes 65535 (fewer sequences than that)."""
    return max_positions * CHUNK * 2


def table_slots(n_keys: Any) -> np.ndarray:
    """Slots of a summary's CountTable after it has held `n_keys` distinct keys and been added to since:
    it doubles (from 16) before any add that could leave it over 3/4 full, so the smallest power of two
    >= 16 with (n + 1) * 4 <= 3 * slots; 0 when nothing was added. A summary prunes as soon as it
    reaches `capacity` keys, so it holds at most capacity - 1 between adds: pass min(distinct, capacity - 1)."""
    n = np.atleast_1d(np.asarray(n_keys, np.int64))
    s = np.full(n.shape, 16, np.int64)
    while (grow := (n + 1) * 4 > 3 * s).any():
        s[grow] *= 2
    return np.where(n > 0, s, 0).reshape(np.shape(n_keys))


def neuron_bytes(d_tokens: Any, d_bigrams: Any, d_trigrams: Any, capacity: int) -> np.ndarray:
    """Heap of one live neuron's NeuronAcc (positions excluded, they are per chunk) after it fired on
    that many distinct tokens / bigrams / trigrams: token slots 8 bytes, n-gram slots 12 bytes, and a tag
    byte per slot plus GROUP. Does not grow once each count reaches `capacity` (512-slot tables up to
    capacity 384: 18,264 bytes)."""
    cap = lambda d: np.minimum(np.asarray(d, np.int64), capacity - 1)  # noqa: E731

    def table(slots: np.ndarray, slot_bytes: int) -> np.ndarray:
        return np.where(slots > 0, (slot_bytes + 1) * slots + GROUP, 0)

    return (
        ACC_BYTES
        + table(table_slots(cap(d_tokens)), 8)
        + table(table_slots(cap(d_bigrams)), 12)
        + table(table_slots(cap(d_trigrams)), 12)
    )


def hashmap_buckets(n_items: int) -> int:
    """Buckets of a hashbrown map grown one insert at a time to `n_items` (the data's own n-gram
    occurrence tables): the smallest power of two >= 4 whose capacity (7/8 of it from 8 up) holds them."""
    if n_items <= 0:
        return 0
    b = 4
    while (b - 1 if b < 8 else b // 8 * 7) < n_items:
        b *= 2
    return b


def hashmap_accounted_bytes(n_items: int) -> int:
    """What `memory_bytes()` counts for such a map: capacity x 8 / 7 x 17 (buckets of a 16-byte entry and
    a control byte)."""
    b = hashmap_buckets(n_items)
    return (b - 1 if b < 8 else b // 8 * 7) * 8 // 7 * 17 if b else 0


def hashmap_heap_bytes(n_items: int) -> int:
    """Its real heap: a 16-byte (u64, u32) entry and a control byte per bucket, + 16 control bytes."""
    b = hashmap_buckets(n_items)
    return b * 17 + 16 if b else 0


def machine() -> dict:
    """nproc, CPU model, load average (other users of the machine skew timings), versions."""
    model = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info = {
        "nproc": os.cpu_count(),
        "cpu": model,
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def allocator_env() -> list[str]:
    """The allocator settings this process runs under (they change CPU timings: RESULTS 7a); [] for glibc's."""
    return [f"{k}={os.environ[k]}" for k in ("LD_PRELOAD", "MALLOC_CONF", "THP_MEM_ALLOC_ENABLE") if os.environ.get(k)]


def command() -> str:
    """The command line, with the allocator settings it ran under."""
    return " ".join(shlex.quote(a) for a in [*allocator_env(), Path(sys.executable).name, *sys.argv])


def git_commit() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return r.stdout.strip() or None


def markdown(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def record(name: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], *, notes: str = "",
           extra: dict | None = None, machine_info: dict | None = None) -> None:  # fmt: skip
    """Print the table and store it in benches/results/<name>.json (list of runs; a run with the same
    command, CPU and commit replaces the older one; without git, e.g. on a device machine, runs add up)."""
    table = markdown(headers, rows)
    print(table)
    if notes:
        print(notes)
    entry = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": command(),
        "commit": git_commit(),
        "machine": machine_info or machine(),
        "headers": list(headers),
        "rows": [list(r) for r in rows],
        "table": table,
        "notes": notes,
        **(extra or {}),
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    same = ("command", "commit")
    runs = [r for r in runs if not (entry["commit"] and all(r.get(k) == entry[k] for k in same)
                                    and r["machine"].get("cpu") == entry["machine"]["cpu"])]  # fmt: skip
    runs.append(entry)
    path.write_text(json.dumps(runs, indent=1, default=str) + "\n")
    print(f"(recorded in {path.relative_to(HERE.parent)})")


def zipf_tokens(n_seq: int, rng: np.random.Generator, *, seq_len: int = T, vocab: int = VOCAB) -> np.ndarray:
    """(n_seq, seq_len) token ids: Zipf(1) over the vocabulary with a fixed random id permutation,
    BOS at position 0."""
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = 1.0 / ranks
    p /= p.sum()
    perm = np.random.default_rng(1234).permutation(vocab)
    ids = perm[rng.choice(vocab, size=(n_seq, seq_len), p=p)]
    ids[:, 0] = BOS
    return ids.astype(np.int64)


def pack_rows(acts: np.ndarray) -> np.ndarray:
    """(rows, n) bool -> (rows, ceil(n/64)) uint64, bit j of word w = neuron 64 w + j."""
    rows, n = acts.shape
    words = -(-n // 64)
    if words * 64 != n:
        acts = np.concatenate([acts, np.zeros((rows, words * 64 - n), bool)], axis=1)
    return np.ascontiguousarray(np.packbits(acts, axis=1, bitorder="little")).view("<u8")


def uniform_bits(rows: int, n: int, density: float, rng: np.random.Generator) -> np.ndarray:
    """Every neuron active independently with probability `density` (the accumulators' worst case)."""
    out = np.empty((rows, -(-n // 64)), np.uint64)
    step = 1024
    for r in range(0, rows, step):
        out[r : r + step] = pack_rows(rng.random((min(step, rows - r), n), dtype=np.float32) < density)
    return out


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


class Timer:
    """Wall and process CPU time (all threads) of a block."""

    def __enter__(self) -> "Timer":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def random_opt(config_kwargs: dict | None = None, *, dtype: Any = None, device: Any = "cpu", seed: int = 0) -> Any:
    """An OPT model with random weights (OPTConfig defaults = the OPT-125m shape), in eval mode."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    cfg = OPTConfig(**(config_kwargs or {}))
    with torch.device(device):
        model = OPTForCausalLM(cfg)
    if dtype is not None:
        model = model.to(dtype)
    model.config._name_or_path = "random-opt"
    return model.eval()


def paper_densities(n_layers: int) -> list[float]:
    """Per-layer fc1 densities shaped like trained OPT's (METHOD.md's reference figures: live neurons fire
    on under 0.5% of tokens in the first half of large models, 5-10% near the top): 0.3% up to half
    depth, then rising linearly to 7.5% at the last layer (mean ~2% for 32 layers)."""
    top = max(n_layers - 1, 1)
    return [0.003 + max(0.0, 2 * l / top - 1) * (0.075 - 0.003) for l in range(n_layers)]


def density_targets(arg: str, n_layers: int) -> float | list[float] | None:
    """A benchmark's --density: a fraction for every layer, 'paper' (paper_densities) or 'none'."""
    return None if arg == "none" else paper_densities(n_layers) if arg == "paper" else float(arg)


def calibrate_density(model: Any, ids: Any, density: float | Sequence[float] | None, passes: int = 2) -> list[float]:
    """Shift every fc1 bias so that about `density` (one for all layers, or one per layer) of the fc1
    outputs are > 0 on `ids` (random weights give ~50%; trained OPT layers are far sparser). None: leave
    the model as it is. Returns the measured fraction per layer after calibration."""
    import torch

    layers = model.model.decoder.layers
    targets = density if density is None or isinstance(density, Sequence) else [density] * len(layers)
    outs: dict[int, torch.Tensor] = {}
    hooks = [layer.fc1.register_forward_hook(lambda m, i, o, k=k: outs.__setitem__(k, o.detach()))
             for k, layer in enumerate(layers)]  # fmt: skip
    try:
        with torch.inference_mode():
            for _ in range(passes if density is not None else 0):
                model.model.decoder(input_ids=ids, use_cache=False)
                for k, layer in enumerate(layers):
                    flat = outs[k].float().reshape(-1)
                    sample = flat[torch.randint(0, flat.numel(), (min(flat.numel(), 1 << 22),), device=flat.device)]
                    q = torch.quantile(sample, 1.0 - targets[k])
                    layer.fc1.bias.sub_(q.to(layer.fc1.bias.dtype))
            model.model.decoder(input_ids=ids, use_cache=False)
            return [float((outs[k] > 0).float().mean()) for k in range(len(layers))]
    finally:
        for h in hooks:
            h.remove()

"""End-to-end `opt_neurons.analyze()` vs a bare forward pass of the same model on the same tokens with
the same batching, in one run, on the CPU: the analysis overhead in %.

Model: OPT-125m shape (OPTConfig defaults: 12 layers, d=768, ffn 3072, 12 heads, T=2048), random
weights, float32. Random weights make ~50% of fc1 outputs positive; trained OPT layers are far sparser
(the paper: live neurons fire on well under 10% of tokens), so by default every fc1 bias is shifted to
give `--density` (5%) on the data; `--density none` keeps the raw random model (the worst case).

Bare: `model.model.decoder(input_ids=batch, use_cache=False)` under torch.inference_mode, batch after
batch (what a user's hooks run). analyze() ends each pass at the last layer's fc1 (nothing after it
feeds a statistic), so a second bare forward ending there too gives the counting's own overhead
(and how much the early end saves). analyze(): the whole call, i.e. bit capture on every fc1,
counting on the worker thread, finalisation into tables (including suppression scores) — on a few
sequences the fixed cost of finalisation weighs far more than over the 5 M tokens of a real run, so
the forward phase (`metadata["forward_seconds"]`) is reported on its own too. Rounds alternate
bare / bare to the last fc1 / analyze; each round's ratio is taken against its own bare forward, and
the median of those ratios counts. Beside wall time, the process's CPU time (all threads) of the bare
forward and of the forward phase (`metadata["forward_cpu_seconds"]`): on a shared machine, other
tenants stretch wall time but not this process's CPU time, and on a CPU-bound machine the counting's
CPU time is what the analysis costs. The examples' own time in the forward's thread
(`metadata["examples"]["seconds"]`, measured inside each run) is reported too: on a noisy machine it is
the steadier figure for what examples cost, as the side-by-side runs' differences drown in the noise.
Each analyze() call's user and system CPU time and minor page faults (and those of its forward phase) are
printed too: with glibc's malloc, torch's large CPU temporaries are faulted in afresh by a varying amount from
call to call, and the system time of those faults moved the forward phase by up to a third on this machine,
with examples or without; run under jemalloc that never returns pages (README, "Runs on the CPU") they are not:
    LD_PRELOAD=libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 python benches/bench_overhead.py ...

    python benches/bench_overhead.py                    # 4 sequences of 2048 tokens, batch 2, 2 rounds
    python benches/bench_overhead.py --density none
    python benches/bench_overhead.py --density paper    # per-layer densities like trained OPT's (mean ~2%)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import opt_neurons  # noqa: E402
from opt_neurons.executors import ending_at  # noqa: E402

from _common import Timer, allocator_env, calibrate_density, density_targets, machine, random_opt, record, zipf_tokens  # noqa: E402


def bare_forward(model, tokens: np.ndarray, batch_size: int, to_last_fc1: bool = False) -> None:
    """The whole decoder per batch, or (to_last_fc1) ending where analyze()'s passes end."""
    decoder = model.model.decoder
    with torch.inference_mode(), ending_at(decoder.layers[-1].fc1, enabled=to_last_fc1) as run:
        for b in range(0, len(tokens), batch_size):
            run(lambda b=b: decoder(input_ids=torch.from_numpy(tokens[b : b + batch_size]), use_cache=False))


def model_and_tokens(seqs: int, density: str, seed: int = 0) -> tuple[Any, np.ndarray, list[float]]:
    """The OPT-125m-shaped model with fc1 at `density` (see --density), Zipf tokens, the measured density per
    layer; one short forward as warm-up."""
    model = random_opt(seed=seed)
    tokens = zipf_tokens(seqs, np.random.default_rng(seed))
    target = density_targets(density, model.config.num_hidden_layers)
    measured = calibrate_density(model, torch.from_numpy(tokens[:1]), target)
    bare_forward(model, tokens[:1, :256], 1)  # warm-up
    return model, tokens, measured


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, default=4, help="sequences of 2048 tokens")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--density", default="0.05", help="target fraction of fc1 outputs > 0; 'paper': per layer, "
                    "shaped like trained OPT's (_common.paper_densities); 'none': as initialised")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--examples",
        default="16",
        help="examples= of analyze(); a comma list (e.g. 0,16: issue 18's on / off pair) runs one analyze() per "
        "value in each round, side by side, and reports each against the round's bare forward and the last "
        "against the first",
    )
    a = ap.parse_args()
    info = machine()
    model, tokens, measured = model_and_tokens(a.seqs, a.density, a.seed)
    print(f"fc1 density per layer: {np.round(measured, 4).tolist()}", flush=True)
    ks = [int(k) for k in a.examples.split(",")]
    bare, bare_cpu, short = [], [], []
    keys = ["total", "fwd", "fwd_cpu", "count", "ex", "user", "sys", "faults", "fwd_faults"]
    runs: dict[int, dict[str, list]] = {k: {key: [] for key in keys} for k in ks}
    for r in range(a.rounds):
        cpu0 = time.process_time()
        with Timer() as tb:
            bare_forward(model, tokens, a.batch_size)
        bare_cpu.append(time.process_time() - cpu0)
        bare.append(tb.wall)
        with Timer() as ts:
            bare_forward(model, tokens, a.batch_size, to_last_fc1=True)
        short.append(ts.wall)
        print(f"round {r}: bare {tb.wall:.2f} s ({bare_cpu[-1]:.1f} CPU-s), bare to the last fc1 {ts.wall:.2f} s",
              flush=True)  # fmt: skip
        for k in ks[::-1] if r % 2 else ks:  # alternate which analyze() runs first
            x = runs[k]
            u0 = resource.getrusage(resource.RUSAGE_SELF)
            with Timer() as ta:
                an = opt_neurons.analyze(model, tokens, batch_size=a.batch_size, progress=False, examples=k)
            u1 = resource.getrusage(resource.RUSAGE_SELF)
            x["user"].append(u1.ru_utime - u0.ru_utime)
            x["sys"].append(u1.ru_stime - u0.ru_stime)
            x["faults"].append(u1.ru_minflt - u0.ru_minflt)
            m = an.metadata
            x["fwd_faults"].append(m["forward_page_faults"])
            for key, value in [("total", ta.wall), ("fwd", m["forward_seconds"]),
                               ("fwd_cpu", m["forward_cpu_seconds"]), ("count", m["counting_seconds"]),
                               ("ex", m["examples"]["seconds"])]:  # fmt: skip
                x[key].append(value)
            print(f"  analyze(examples={k}): forward phase {m['forward_seconds']:.2f} s ({m['forward_cpu_seconds']:.1f} "
                  f"CPU-s, counting {m['counting_seconds']:.2f} s, examples {m['examples']['seconds']:.2f} s), "
                  f"whole call {ta.wall:.2f} s (user {x['user'][-1]:.1f} s, system {x['sys'][-1]:.1f} s, "
                  f"{x['faults'][-1]:,} page faults, {m['forward_page_faults']:,} in the forward phase)", flush=True)  # fmt: skip
    b, bc = statistics.median(bare), statistics.median(bare_cpu)
    saved = statistics.median(1 - y / v for v, y in zip(bare, short))
    n_tok = tokens.size
    events = float(an.neurons["n_active"].sum())
    rows = []
    for k, x in runs.items():
        w, f = statistics.median(x["fwd"]), statistics.median(x["total"])
        # Per-round ratios (each against the bare forward of its own round), then their median.
        over = [v / y - 1 for v, y in zip(x["fwd"], bare)]
        over_short = [v / y - 1 for v, y in zip(x["fwd"], short)]
        over_cpu = [c / y - 1 for c, y in zip(x["fwd_cpu"], bare_cpu)]
        rows.append([k, f"{np.mean(measured):.3f}", n_tok, a.batch_size, f"{b:.2f}", f"{w:.2f}", f"{f - w:.2f}", f"{f:.2f}",
                     f"**{100 * statistics.median(over):+.1f}%** (rounds " + ", ".join(f"{100 * o:+.1f}%" for o in over) + ")",
                     f"{100 * (f - b) / b:+.1f}%", f"{bc:.1f}", f"{statistics.median(x['fwd_cpu']):.1f}",
                     f"{100 * statistics.median(over_cpu):+.1f}%", f"{100 * saved:.1f}%",
                     f"{100 * statistics.median(over_short):+.1f}%", f"{statistics.median(x['count']):.2f}",
                     f"{n_tok / b:,.0f}", f"{n_tok / f:,.0f}", f"{events / n_tok:,.0f}",
                     f"{statistics.median(x['ex']):.3f}", f"{100 * statistics.median(e / v for e, v in zip(x['ex'], x['fwd'])):.1f}%"])  # fmt: skip
    allocator = " ".join(allocator_env()) or "glibc malloc"
    notes = ("OPT-125m shape, random weights (fc1 biases shifted to the density shown), float32 on the CPU, "
             f"torch threads {torch.get_num_threads()}, allocator {allocator}; medians of {a.rounds} alternating "
             "rounds.")  # fmt: skip
    if len(ks) > 1:  # the examples' own cost: forward phases of the same round, side by side
        first, last = runs[ks[0]], runs[ks[-1]]
        pair = [v / u - 1 for u, v in zip(first["fwd"], last["fwd"])]
        pair_cpu = [v / u - 1 for u, v in zip(first["fwd_cpu"], last["fwd_cpu"])]
        pair_user = [v / u - 1 for u, v in zip(first["user"], last["user"])]
        notes += (f" examples={ks[-1]} against examples={ks[0]}, forward phase, median of rounds: "
                  f"{100 * statistics.median(pair):+.1f}% (rounds " + ", ".join(f"{100 * o:+.1f}%" for o in pair)
                  + f"); CPU time {100 * statistics.median(pair_cpu):+.1f}%; whole call's user CPU time "
                  f"{100 * statistics.median(pair_user):+.1f}% (rounds " + ", ".join(f"{100 * o:+.1f}%" for o in pair_user)
                  + "); page faults per call (median) "
                  + ", ".join(f"examples={k} {statistics.median(runs[k]['faults']):,.0f} ({statistics.median(runs[k]['fwd_faults']):,.0f} in the forward phase, {statistics.median(runs[k]['sys']):.1f} s system)" for k in ks)
                  + ".")  # fmt: skip
        print(notes, flush=True)
    record("overhead",
           ["examples", "fc1 density", "tokens", "batch", "bare forward s", "analyze forward phase s",
            "analyze setup and finalize s", "analyze total s", "overhead forward phase (median of rounds)",
            "overhead total", "bare CPU s", "forward phase CPU s", "CPU-time overhead (median of rounds)",
            "ending at the last fc1 saves (median)", "overhead vs bare ending there (median)", "counting s",
            "bare tok/s", "analyze tok/s", "activation events per token (all layers)",
            "examples s (in the forward's thread)", "examples share of the forward phase (median)"],
           rows, machine_info=info, notes=notes,
           extra={"bare_s": bare, "bare_to_last_fc1_s": short, "bare_cpu_s": bare_cpu, "analyze": runs,
                  "density_per_layer": measured})  # fmt: skip


if __name__ == "__main__":
    main()

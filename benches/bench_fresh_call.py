"""One analyze() call per fresh process, as a user runs it: the CPU overhead of the examples (issue 18) where
the allocator's heap has not settled (bench_overhead.py runs all its rounds in one process).

Each child process builds the OPT-125m-shaped model at the chosen density, runs one bare forward over the
tokens, then one analyze(examples=K) over the same tokens, and reports both with their system time, minor page
faults and peak RSS. The children alternate between the values of --examples. Run it under the allocator to
measure (e.g. `LD_PRELOAD=... MALLOC_CONF=... python benches/bench_fresh_call.py`): the children inherit it.

    python benches/bench_fresh_call.py --seqs 16 --examples 0,16 --reps 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import allocator_env, record, rss_bytes  # noqa: E402


def child(k: int, seqs: int, density: str, batch_size: int) -> None:
    import opt_neurons
    from bench_overhead import bare_forward, model_and_tokens

    model, tokens, _ = model_and_tokens(seqs, density)
    u0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    bare_forward(model, tokens, batch_size)
    bare, u1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    rss0 = rss_bytes()
    an = opt_neurons.analyze(model, tokens, batch_size=batch_size, progress=False, examples=k)
    u2, m = resource.getrusage(resource.RUSAGE_SELF), an.metadata
    print(json.dumps({
        "bare_s": bare, "bare_sys_s": u1.ru_stime - u0.ru_stime, "bare_faults": u1.ru_minflt - u0.ru_minflt,
        "fwd_s": m["forward_seconds"], "fwd_sys_s": m["forward_system_seconds"],
        "fwd_faults": m["forward_page_faults"], "examples_s": m["examples"]["seconds"],
        "user_s": u2.ru_utime - u1.ru_utime, "peak_above_start_mib": (u2.ru_maxrss * 1024 - rss0) / 2**20,
    }))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", type=int, default=16, help="sequences of 2048 tokens")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--density", default="paper", help="as in bench_overhead.py")
    ap.add_argument("--examples", default="0,16", help="examples= values, one child process each per repetition")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        return child(a.child, a.seqs, a.density, a.batch_size)
    ks = [int(k) for k in a.examples.split(",")]
    runs: dict[int, list[dict]] = {k: [] for k in ks}
    for rep in range(a.reps):
        for k in ks[::-1] if rep % 2 else ks:
            cmd = [sys.executable, __file__, "--child", str(k), "--seqs", str(a.seqs), "--density", a.density,
                   "--batch-size", str(a.batch_size)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            runs[k].append(r)
            print(f"rep {rep} examples={k}: bare {r['bare_s']:.2f} s (system {r['bare_sys_s']:.2f}), forward phase "
                  f"{r['fwd_s']:.2f} s (system {r['fwd_sys_s']:.2f}, {r['fwd_faults']:,} faults), examples "
                  f"{r['examples_s']:.2f} s, peak RSS above start {r['peak_above_start_mib']:.0f} MiB", flush=True)  # fmt: skip
    med = statistics.median
    rows = []
    for k, rs in runs.items():
        over = [r["fwd_s"] / r["bare_s"] - 1 for r in rs]
        rows.append([k, a.seqs * 2048, len(rs), f"{med(r['bare_s'] for r in rs):.2f}",
                     f"{med(r['fwd_s'] for r in rs):.2f}", ", ".join(f"{100 * o:+.1f}%" for o in over),
                     f"{med(r['fwd_sys_s'] for r in rs):.2f}", f"{med(r['fwd_faults'] for r in rs):,.0f}",
                     f"{med(r['examples_s'] / r['fwd_s'] for r in rs):.1%}",
                     f"{med(r['peak_above_start_mib'] for r in rs):.0f}"])  # fmt: skip
    base = runs[ks[0]]
    notes = [f"allocator {' '.join(allocator_env()) or 'glibc malloc'}; one process per analyze() call."]
    for k in ks[1:]:
        d = [r["fwd_s"] / b["fwd_s"] - 1 for r, b in zip(runs[k], base)]
        notes.append(f"examples={k} against examples={ks[0]}, forward phase, by repetition: "
                     + ", ".join(f"{100 * x:+.1f}%" for x in d))  # fmt: skip
    record(
        "fresh_call",
        [
            "examples",
            "tokens",
            "processes",
            "bare forward s (median)",
            "analyze forward phase s (median)",
            "forward vs its process's bare forward",
            "forward system s (median)",
            "forward faults (median)",
            "examples' own share (median)",
            "peak RSS above start MiB (median)",
        ],
        rows,
        notes=" ".join(notes),
        extra={"runs": runs},
    )


if __name__ == "__main__":
    main()

"""The same neuron census with the tools users would pick instead (issue 22): nnsight and TransformerLens beside
opt_neurons.analyze() and a bare forward, each in a process of its own, in alternating rounds; wall time of the
work and the process's peak memory (RSS; on a GPU also the device's peak).

The census a user writes with a peer (per layer, on the device the model runs on, in torch): per-neuron firing
counts, exact per-(neuron, token) counts (`torch.unique` of neuron x vocabulary keys, merged across batches) and
per-(neuron, position) counts. analyze() computes these and much more (bigrams, trigrams, coverage, detectors,
positional intervals, examples, tables). Firing: the fc1 output > 0 (OPT's ReLU).

Model: OPT-125m shape, random weights with fc1 biases shifted to `--density` (as bench_overhead.py), saved once
with the GPT-2 tokenizer so every tool loads the same files. Tools:
- bare: the decoder forward, ending at the last fc1 (what analyze() runs);
- opt_neurons: `analyze(model_dir, tokens)` (defaults; examples on), its forward phase reported too;
- hooks: plain torch forward hooks on every fc1 with the same census (what nnsight does underneath, without
  its tracing; needs nothing installed, so it is the peer on machines without nnsight, e.g. the GPU check's);
- nnsight: `NNsight(model).trace(ids)` with `fc1.output.save()` for every layer, the census in torch;
- transformer_lens: `TransformerBridge.boot_transformers(dir, hf_model=model)` and `run_with_cache` of the
  MLP hooks (`blocks.{i}.mlp.hook_post`... whichever names end in "mlp.hook_post" or the fc1 output), the census
  in torch.

The peers are bench-only dependencies: install them in an environment of their own, e.g.
    python -m venv --without-pip /tmp/peers && echo $VIRTUAL_ENV/lib/python3.11/site-packages \\
        > /tmp/peers/lib/python3.11/site-packages/main.pth && /tmp/peers/bin/python -m pip install nnsight transformer_lens
    /tmp/peers/bin/python benches/bench_peers.py --seqs 8 --rounds 3
A tool that is not installed is reported as such and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

TOOLS = ["bare", "opt_neurons", "hooks", "nnsight", "transformer_lens"]


class Census:
    """Per layer: firing counts (F,), per-position counts (T, F), exact per-(neuron, token) counts as sorted
    unique keys neuron * V + token with their counts."""

    def __init__(self, n_layers: int, n_neurons: int, seq_len: int, vocab: int, device) -> None:
        import torch

        self.v = vocab
        self.count = torch.zeros(n_layers, n_neurons, dtype=torch.int64, device=device)
        self.pos = torch.zeros(n_layers, seq_len, n_neurons, dtype=torch.int32, device=device)
        self.keys = [torch.zeros(0, dtype=torch.int64, device=device) for _ in range(n_layers)]
        self.counts = [torch.zeros(0, dtype=torch.int64, device=device) for _ in range(n_layers)]

    def add(self, layer: int, out, ids) -> None:
        import torch

        fired = out.reshape(*ids.shape, -1) > 0  # (B, T, F); OPT's fc1 sees the rows flattened
        self.count[layer] += fired.sum((0, 1))
        self.pos[layer, : fired.shape[1]] += fired.sum(0, dtype=torch.int32)
        b, t, f = fired.nonzero(as_tuple=True)
        keys, counts = torch.unique(f * self.v + ids[b, t], return_counts=True)
        merged, inverse = torch.unique(torch.cat([self.keys[layer], keys]), return_inverse=True)
        total = torch.zeros(len(merged), dtype=torch.int64, device=merged.device)
        self.keys[layer] = merged
        self.counts[layer] = total.index_add_(0, inverse, torch.cat([self.counts[layer], counts]))

    def summary(self) -> dict:
        return {"activations": int(self.count.sum()), "neuron_token_pairs": sum(len(k) for k in self.keys)}


def build(out: Path, density: str, seqs: int, seed: int) -> None:
    """The model (random OPT-125m shape, fc1 biases set for the density) and the tokens, saved for the workers."""
    import numpy as np
    import torch
    from transformers import GPT2TokenizerFast

    from _common import calibrate_density, density_targets, random_opt, zipf_tokens

    model = random_opt(seed=seed)
    tokens = zipf_tokens(seqs, np.random.default_rng(seed))
    measured = calibrate_density(model, torch.from_numpy(tokens[:1]), density_targets(density, 12))
    model.save_pretrained(out)
    # the repository's GPT-2 tokenizer (the bridge loads one from the model's folder)
    GPT2TokenizerFast.from_pretrained(
        Path(__file__).resolve().parents[1] / "tests" / "data" / "gpt2-bpe"
    ).save_pretrained(out)
    np.save(out / "tokens.npy", tokens)
    (out / "density.json").write_text(json.dumps(measured))


def worker(tool: str, model_dir: Path, batch_size: int, counting: str) -> dict:
    """One tool's run in this process: the seconds of its work (loading excluded) and its census."""
    import numpy as np
    import torch
    from transformers import OPTForCausalLM

    from _common import peak_rss_bytes

    tokens = np.load(model_dir / "tokens.npy")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    result: dict = {"tool": tool}
    if tool == "opt_neurons":
        import opt_neurons

        # eager attention as for the peers (TransformerLens needs it): the same activations to the last bit
        model = OPTForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager").to(device).eval()
        t0 = time.perf_counter()
        a = opt_neurons.analyze(model, tokens, batch_size=batch_size, progress=False, counting=counting)
        result["seconds"] = time.perf_counter() - t0
        result["forward_seconds"] = a.metadata["forward_seconds"]
        result["census"] = {"activations": int(a.neurons["n_active"].sum())}
    else:
        model = OPTForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager").to(device).eval()
        cfg = model.config
        census = Census(cfg.num_hidden_layers, cfg.ffn_dim, tokens.shape[1], cfg.vocab_size, device)
        run = _runner(tool, model, model_dir, census)
        run(torch.from_numpy(tokens[:1, :64]).to(device))  # warm-up, then a fresh census
        census.__init__(cfg.num_hidden_layers, cfg.ffn_dim, tokens.shape[1], cfg.vocab_size, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in range(0, len(tokens), batch_size):
                run(torch.from_numpy(tokens[b : b + batch_size]).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        result["seconds"] = time.perf_counter() - t0
        result["census"] = census.summary() if tool != "bare" else {}
    result["peak_rss_bytes"] = peak_rss_bytes()
    if device.type == "cuda":
        result["peak_device_bytes"] = torch.cuda.max_memory_allocated()
    return result


def _runner(tool: str, model, model_dir: Path, census: Census):
    """A function of a batch's token ids that runs the tool's forward and adds to the census."""
    import torch

    layers = model.model.decoder.layers
    if tool == "bare":

        class Stop(Exception):
            pass

        def stop(*_):
            raise Stop

        layers[-1].fc1.register_forward_hook(stop)

        def bare(ids):
            try:
                model.model.decoder(input_ids=ids, use_cache=False)
            except Stop:
                pass

        return bare
    if tool == "hooks":
        batch: dict = {}
        for i, layer in enumerate(layers):
            layer.fc1.register_forward_hook(lambda m, args, out, i=i: census.add(i, out, batch["ids"]))

        def hooks_run(ids):
            batch["ids"] = ids
            model.model.decoder(input_ids=ids, use_cache=False)

        return hooks_run
    if tool == "nnsight":
        from nnsight import NNsight

        wrapped = NNsight(model)

        def nnsight_run(ids):
            outs: list = []  # filled inside the trace (nnsight runs its body apart: only mutations come back)
            with torch.inference_mode(), wrapped.trace(input_ids=ids, use_cache=False):
                for i in range(len(layers)):
                    outs.append(wrapped.model.decoder.layers[i].fc1.output.save())
            for i, out in enumerate(outs):
                census.add(i, out, ids)

        return nnsight_run
    if tool == "transformer_lens":
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(str(model_dir), hf_model=model, device=model.device)
        names = [n for n in bridge.hook_dict if n.endswith("mlp.hook_post") or n.endswith("mlp.in.hook_out")]
        post = sorted((n for n in names if n.endswith("mlp.hook_post")), key=lambda n: int(n.split(".")[1]))
        if len(post) != len(layers):
            raise SystemExit(f"transformer_lens: found {len(post)} mlp.hook_post hooks for {len(layers)} layers")

        def tl_run(ids):
            with torch.inference_mode():
                _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in post)
            for i, name in enumerate(post):
                census.add(i, cache[name], ids)

        return tl_run
    raise SystemExit(f"unknown tool {tool!r}")


def main() -> None:
    import statistics

    from _common import machine, record

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seqs", type=int, default=8, help="sequences of 2048 tokens")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--density", default="0.05", help="as bench_overhead.py: a fraction, 'paper' or 'none'")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--counting", default="auto", help="analyze()'s counting= (issue 22: device on a GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, Path(a.model_dir), a.batch_size, a.counting)))
        return
    tools = a.tools.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "opt-125m-shape"
        build(model_dir, a.density, a.seqs, a.seed)
        density = json.loads((model_dir / "density.json").read_text())
        runs: dict[str, list[dict]] = {t: [] for t in tools}
        for r in range(a.rounds):
            for tool in tools[r % len(tools) :] + tools[: r % len(tools)]:  # rotate the order each round
                cmd = [sys.executable, __file__, "--worker", tool, "--model-dir", str(model_dir),
                       "--batch-size", str(a.batch_size), "--counting", a.counting]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"round {r}: {tool} failed: {last}", flush=True)
                    runs[tool].append({"error": last})
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[tool].append(res)
                print(f"round {r}: {tool} {res['seconds']:.2f} s, peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB "
                      f"{res.get('census', '')}", flush=True)  # fmt: skip
    ok = {t: [x for x in v if "seconds" in x] for t, v in runs.items()}
    bare = statistics.median(x["seconds"] for x in ok["bare"]) if ok.get("bare") else None
    rows = []
    for tool, xs in ok.items():
        if not xs:
            rows.append([tool, "failed: " + runs[tool][-1]["error"][:80], "", "", "", ""])
            continue
        s = statistics.median(x["seconds"] for x in xs)
        fwd = [x["forward_seconds"] for x in xs if "forward_seconds" in x]
        rows.append([tool, f"{s:.2f}" + (f" (forward phase {statistics.median(fwd):.2f})" if fwd else ""),
                     f"{s / bare:.2f}" if bare else "", f"{statistics.median(x['peak_rss_bytes'] for x in xs) / 2**30:.2f}",
                     f"{statistics.median(x.get('peak_device_bytes', 0) for x in xs) / 2**30:.2f}",
                     json.dumps(xs[-1].get("census", {}))])  # fmt: skip
    record("peers", ["tool", "work s (median)", "x bare forward to the last fc1", "peak RSS GiB", "peak device GiB",
                     "census (last round)"], rows, machine_info=machine(),
           notes=f"OPT-125m shape, random weights, fc1 density {sum(density) / len(density):.3f}; {a.seqs} x 2048 "
                 f"tokens, batch {a.batch_size}; medians of {a.rounds} rounds, each tool in its own process, the "
                 "order rotated each round", extra={"runs": runs})  # fmt: skip


if __name__ == "__main__":
    main()

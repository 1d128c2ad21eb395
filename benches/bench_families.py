"""Overhead of analyze() over a bare forward for other families' shapes (issue 17), at the density their own
firing rule gives: random weights, whose GELU / SiLU gates are positive on about half the tokens, as smooth
gates of trained models are on a large share (unlike OPT's ReLU, 1-10%). The counting work grows with the
activations, so these are the expensive case for the host.

Shapes (random weights; fp16 on a GPU, fp32 on the CPU):
- gpt2-small: GPT-2, 12 x 768, 3,072 neurons (GELU-new), T = 1024;
- pythia-410m: GPT-NeoX, 24 x 1024, 4,096 neurons (GELU), T = 2048;
- llama-1b: Llama 3.2 1B, 16 x 2048, 8,192 gated SiLU neurons, vocabulary 128,256, T = 2048.

For each, on the same tokens and batches: the bare forward (the model's body, synchronised), analyze()'s
forward phase (`metadata["forward_seconds"]`, its host counting `counting_seconds`), and the same with
`detail_tokens` = one sequence (every other row is only summed per neuron on the device). The density is
what the run counted: sum(n_active) / (tokens x neurons).

    python benches/bench_families.py --seqs 16                 # on a GPU (~1 minute on an H200)
    python benches/bench_families.py --smoke                   # tiny shapes on whatever device there is
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import opt_neurons  # noqa: E402
from opt_neurons import architectures  # noqa: E402

from _common import machine, record  # noqa: E402

SHAPES = {
    "gpt2-small": (
        "GPT2Config",
        dict(n_layer=12, n_embd=768, n_inner=3072, n_head=12, n_positions=1024, vocab_size=50257),
    ),  # fmt: skip
    "pythia-410m": (
        "GPTNeoXConfig",
        dict(
            num_hidden_layers=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            max_position_embeddings=2048,
            vocab_size=50304,
        ),
    ),  # fmt: skip
    "llama-1b": (
        "LlamaConfig",
        dict(
            num_hidden_layers=16,
            hidden_size=2048,
            intermediate_size=8192,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=131072,
            vocab_size=128256,
            tie_word_embeddings=True,
        ),
    ),  # fmt: skip
}
SMOKE = {
    "gpt2-smoke": (
        "GPT2Config",
        dict(
            n_layer=2,
            n_embd=64,
            n_inner=256,
            n_head=4,
            n_positions=128,
            vocab_size=1000,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "llama-smoke": (
        "LlamaConfig",
        dict(
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=256,
            num_attention_heads=4,
            max_position_embeddings=128,
            vocab_size=1000,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),  # fmt: skip
}


def build(config_name: str, kwargs: dict, dtype: torch.dtype, device: torch.device):
    import transformers

    cfg = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def bare_seconds(model, tokens: np.ndarray, batch_size: int, device: torch.device) -> float:
    body = architectures.body(model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(tokens), batch_size):
            body(input_ids=torch.from_numpy(tokens[b : b + batch_size]).to(device), use_cache=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=None, help="comma-separated names (default: all)")
    p.add_argument("--seqs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds of bare / analyze (medians)")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    shapes = SMOKE if args.smoke else SHAPES
    names = args.shapes.split(",") if args.shapes else list(shapes)
    rows = []
    for name in names:
        config_name, kwargs = shapes[name]
        model = build(config_name, kwargs, dtype, device)
        t = architectures.default_seq_len(model.config)
        tokens = np.random.default_rng(0).integers(10, model.config.vocab_size, size=(args.seqs, t))
        tokens[:, 0] = architectures.start_token_id(model.config, None)
        bare_seconds(model, tokens[: args.batch_size], args.batch_size, device)  # warm-up
        bare: list[float] = []
        runs: dict[str, list] = {"every statistic": [], "activity past 1 sequence": []}
        for _ in range(args.rounds):
            bare.append(bare_seconds(model, tokens, args.batch_size, device))
            for label, detail in (("every statistic", None), ("activity past 1 sequence", t)):
                a = opt_neurons.analyze(model, tokens, batch_size=args.batch_size, progress=False,
                                        execution="memory", detail_tokens=detail)  # fmt: skip
                runs[label].append(a.metadata)
                print(f"{name}: bare {bare[-1]:.2f} s; {label}: forward {a.metadata['forward_seconds']:.2f} s",
                      flush=True)  # fmt: skip
        n = a.neurons
        density = float(n["n_active"].sum()) / (tokens.size * n.height)
        for label, ms in runs.items():
            m = ms[0]
            fwd = statistics.median(x["forward_seconds"] for x in ms)
            count = statistics.median(x["counting_seconds"] for x in ms)
            over = statistics.median(x["forward_seconds"] / b - 1 for x, b in zip(ms, bare))  # each round's own bare
            rows.append([name, m["n_layers"], m["n_neurons"], t, tokens.size, f"{density:.3f}", label,
                         f"{statistics.median(bare):.2f}", f"{fwd:.2f}", f"{count:.2f}", f"{100 * over:+.0f}%"])  # fmt: skip
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    kind = "smoke" if args.smoke else "gpu" if device.type == "cuda" else "cpu"
    record(f"families_{kind}",
           ["shape", "layers", "neurons", "T", "tokens", "density", "analyze", "bare s", "forward s", "counting s",
            "overhead"], rows, machine_info=machine(),
           notes=f"density: what the family's firing rule (> 0) gives on random weights; medians of {args.rounds} "
                 f"rounds, overhead against each round's own bare forward; {dtype} on {device.type}, "
                 f"torch threads {torch.get_num_threads()}")  # fmt: skip


if __name__ == "__main__":
    main()

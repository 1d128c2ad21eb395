"""Where each model family keeps its neurons: one declarative entry per family (METHOD.md "Beyond OPT").

An entry names, by attribute path, the decoder layers, the module whose OUTPUT is the neuron tensor
(the activation that enters the down projection; for gated MLPs act_fn(gate)), the down projection
(its weight holds the value vectors), the final norm, any output projection before the unembedding,
and which end-of-document token starts sequences. Everything else (embeddings, masks, rotary or
ALiBi position encodings) comes from the model's own forward, so no family needs code of its own.
`register_architecture` adds a family with the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ModelError

DEFAULT_SEQ_LEN = 2048  # T when the model allows more positions (Llama 3: 131,072): METHOD.md "Data"


@dataclass(frozen=True)
class Architecture:
    """One family's layout. Paths are dotted attribute paths: `layers` and `body` from the *ForCausalLM
    model, `neurons` and `down` inside one decoder layer, `final_norm` and `output_projection` from the
    *ForCausalLM model (None: none)."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # the ModuleList of decoder layers
    neurons: str  # module whose output (..., n_neurons) is the neuron tensor
    down: str  # down projection: value vector of neuron n = its weight[:, n] (or [n, :] when transposed)
    body: str  # module run with input_ids= (embeddings + layers, no LM head)
    final_norm: str | None = None
    output_projection: str | None = None  # e.g. OPT-350m's project_out (d_model -> embedding dim)
    down_transposed: bool = False  # weight is (n_neurons, d_model), as GPT-2's Conv1D
    start: str = "bos"  # sequence start and document separator: "bos" (else eos) or "eos" (else bos)
    activation_keys: tuple[str, ...] = ("hidden_act",)  # config attributes naming the activation
    default_activation: str | None = None  # when the config names none (BLOOM's fixed GELU)
    # The hooked module is the ReLU's input (OPT's fc1: today's contract), so the model must use ReLU and
    # the threshold be >= 0, where fc1 > t is exactly relu(fc1) > t.
    relu_input: bool = False
    gated: bool = False

    def activation(self, config: Any) -> str:
        for key in self.activation_keys:
            value = getattr(config, key, None)
            if isinstance(value, str):
                return value
        return self.default_activation or "unknown"

    def firing_rule(self, config: Any, threshold: float) -> str:
        """The rule in words, for the metadata and the report."""
        if self.relu_input:  # the ReLU's input: > t >= 0 exactly where the ReLU's output is
            return f"{self.neurons} output > {threshold:g} (= relu({self.neurons}) > {threshold:g})"
        return f"{self.neurons} output = {self.activation(config)}({'gate' if self.gated else 'x'}) > {threshold:g}"


REGISTRY: dict[str, Architecture] = {}


def register_architecture(model_types: str | tuple[str, ...] | list[str], *, layers: str, neurons: str, down: str,
                          body: str, final_norm: str | None = None, output_projection: str | None = None,
                          down_transposed: bool = False, start: str = "bos",
                          activation_keys: tuple[str, ...] = ("hidden_act",), default_activation: str | None = None,
                          gated: bool = False, relu_input: bool = False, name: str | None = None) -> Architecture:  # fmt: skip
    """Add (or replace) the layout of a model family, keyed by its `config.model_type`(s).

    layers: path of the decoder layers' ModuleList from the *ForCausalLM model ("model.layers");
    neurons: path inside a layer of the module whose output is the neuron tensor ("mlp.act_fn");
    down: path inside a layer of the down projection ("mlp.down_proj"; down_transposed for a
    (neurons, d_model) weight); body: the module run with input_ids ("model"); final_norm,
    output_projection: paths from the *ForCausalLM model or None; start: "bos" or "eos", the token
    that starts each sequence and separates documents; gated: act_fn(gate) (for the metadata)."""
    types = (model_types,) if isinstance(model_types, str) else tuple(model_types)
    if not types or start not in ("bos", "eos"):
        raise ModelError(f"register_architecture needs model type(s) and start 'bos' or 'eos', got {types}, {start!r}")
    arch = Architecture(name or types[0], types, layers, neurons, down, body, final_norm, output_projection,
                        down_transposed, start, tuple(activation_keys), default_activation, relu_input, gated)  # fmt: skip
    for t in types:
        REGISTRY[t] = arch
    return arch


# ----------------------------------------------------------------------------------------------------- families
register_architecture("opt", layers="model.decoder.layers", neurons="fc1", down="fc2", body="model.decoder",
                      final_norm="model.decoder.final_layer_norm", output_projection="model.decoder.project_out",
                      activation_keys=("activation_function",), relu_input=True)  # fmt: skip
register_architecture("gpt2", layers="transformer.h", neurons="mlp.act", down="mlp.c_proj", body="transformer",
                      final_norm="transformer.ln_f", down_transposed=True, start="eos",
                      activation_keys=("activation_function",))  # fmt: skip
for _type, _down in (("gpt_neo", "mlp.c_proj"), ("gptj", "mlp.fc_out")):
    register_architecture(_type, layers="transformer.h", neurons="mlp.act", down=_down, body="transformer",
                          final_norm="transformer.ln_f", start="eos", activation_keys=("activation_function",))  # fmt: skip
register_architecture("gpt_neox", layers="gpt_neox.layers", neurons="mlp.act", down="mlp.dense_4h_to_h",
                      body="gpt_neox", final_norm="gpt_neox.final_layer_norm", start="eos")  # fmt: skip
register_architecture("bloom", layers="transformer.h", neurons="mlp.gelu_impl", down="mlp.dense_4h_to_h",
                      body="transformer", final_norm="transformer.ln_f", activation_keys=(),
                      default_activation="gelu (bloom)")  # fmt: skip
register_architecture("falcon", layers="transformer.h", neurons="mlp.act", down="mlp.dense_4h_to_h",
                      body="transformer", final_norm="transformer.ln_f", start="eos", activation_keys=("activation",))  # fmt: skip
register_architecture("phi", layers="model.layers", neurons="mlp.activation_fn", down="mlp.fc2", body="model",
                      final_norm="model.final_layernorm", start="eos")  # fmt: skip
register_architecture(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2"), name="llama-family",
                      layers="model.layers", neurons="mlp.act_fn", down="mlp.down_proj", body="model",
                      final_norm="model.norm", activation_keys=("hidden_activation", "hidden_act"), gated=True)  # fmt: skip


# ------------------------------------------------------------------------------------------------------ lookups
def supported() -> list[str]:
    return sorted(REGISTRY)


def for_config(config: Any, what: str = "the model") -> Architecture:
    """The family entry of a config; ModelError naming the supported ones when there is none."""
    model_type = str(getattr(config, "model_type", None))
    arch = REGISTRY.get(model_type)
    if arch is None:
        raise ModelError(
            f"{what} is a {model_type!r} model, which opt_neurons has no architecture adapter for; supported: "
            f"{', '.join(supported())}. Add one with opt_neurons.register_architecture(...)."
        )
    return arch


def get_path(root: Any, path: str | None) -> Any:
    """The object at a dotted attribute path (None for a None path or a missing attribute)."""
    if path is None:
        return None
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: Any) -> Any:
    arch = for_config(model.config, type(model).__name__)
    layers = get_path(model, arch.layers)
    if layers is None or len(layers) == 0:
        raise ModelError(f"{type(model).__name__} has no decoder layers at {arch.layers} (family {arch.name}).")
    return layers


def neuron_modules(model: Any) -> list[Any]:
    """Per layer, the module whose output is the neuron tensor (each must be its own module)."""
    arch = for_config(model.config, type(model).__name__)
    mods = [get_path(layer, arch.neurons) for layer in decoder_layers(model)]
    missing = [i for i, m in enumerate(mods) if m is None]
    if missing:
        raise ModelError(f"layer {missing[0]} of {type(model).__name__} has no {arch.neurons} (family {arch.name}): "
                         "pass neurons= of register_architecture for this model")  # fmt: skip
    if len({id(m) for m in mods}) != len(mods):
        raise ModelError(f"{type(model).__name__}'s layers share one {arch.neurons} module: its outputs cannot be "
                         "told apart by layer; register a per-layer module")  # fmt: skip
    return mods


def down_weight(model: Any, layer: int) -> Any:
    """(d_model, n_neurons) view of a layer's down-projection weight: column n is neuron n's value vector."""
    arch = for_config(model.config)
    w = get_path(decoder_layers(model)[layer], arch.down).weight
    return w.t() if arch.down_transposed else w


def n_neurons(model: Any) -> int:
    return int(down_weight(model, 0).shape[1])


def output_projection(model: Any) -> Any:
    """A projection between the last hidden state and the unembedding (OPT-350m's project_out), else None."""
    return get_path(model, for_config(model.config).output_projection)


def body(model: Any) -> Any:
    return get_path(model, for_config(model.config).body)


def check_activation(model_or_config: Any, what: str) -> None:
    """The family's own requirements on the activation (OPT: ReLU, whose input is hooked)."""
    config = getattr(model_or_config, "config", model_or_config)
    arch = for_config(config, what)
    act = arch.activation(config)
    if arch.relu_input and act != "relu":
        raise ModelError(
            f"{what} uses activation {act!r}, not 'relu': for {arch.name} the neurons are read at {arch.neurons} "
            f"(the ReLU's input; a neuron fires when it is > 0). Use an {arch.name} model with ReLU."
        )


def check_threshold(threshold: float, arch: Architecture) -> None:
    """A threshold below 0 is refused where the hooked output is a ReLU's input: fc1 > t equals relu(fc1) > t
    only for t >= 0. (That it is a finite number, params.RunOptions checks.)"""
    if arch.relu_input and threshold < 0:
        raise ModelError(f"activation_threshold {threshold} < 0 would make every ReLU neuron of {arch.name} fire on "
                         "every token: use a threshold >= 0")  # fmt: skip


def max_positions(config: Any) -> int | None:
    """The most positions the model allows (None: no limit, e.g. BLOOM's ALiBi)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def default_seq_len(config: Any) -> int:
    """T when seq_len is not given: min(max positions, 2048)."""
    limit = max_positions(config)
    return DEFAULT_SEQ_LEN if limit is None else min(limit, DEFAULT_SEQ_LEN)


def start_token_id(config: Any, tokenizer: Any) -> int:
    """The token that starts every sequence and separates documents: the family's BOS (Llama `<s>`, OPT
    `</s>`) or end-of-text (GPT-2, Pythia: they prepend nothing and were trained with it between
    documents), falling back to the other, then to OPT's 2."""
    arch = REGISTRY.get(str(getattr(config, "model_type", None)))
    order = ("eos", "bos") if arch is not None and arch.start == "eos" else ("bos", "eos")
    for kind in order:
        for source in (tokenizer, config):
            value = getattr(source, f"{kind}_token_id", None) if source is not None else None
            if isinstance(value, list):
                value = value[0] if value else None
            if value is not None:
                return int(value)
    return 2

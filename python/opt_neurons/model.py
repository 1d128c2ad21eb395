"""Load an OPT model and tokenizer through the Hugging Face cache, and check it is OPT-like with ReLU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError

EXPECTED = "model.decoder.layers[i].fc1 -> ReLU -> fc2 (transformers OPTForCausalLM)"
DEMO_DIR = Path(__file__).parent / "demo"


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    model_id: str
    revision: str | None
    device: torch.device


def decoder_layers(model: Any) -> Any:
    decoder = getattr(getattr(model, "model", model), "decoder", None)
    layers = getattr(decoder, "layers", None)
    if layers is None or len(layers) == 0:
        raise ModelError(
            f"{type(model).__name__} is not an OPT-like decoder: expected {EXPECTED}. "
            "Pass an OPT checkpoint such as facebook/opt-125m."
        )
    return layers


def output_projection(model: Any) -> Any:
    """OPT-350m's project_out (d_model -> word_embed_proj_dim) before the unembedding, else None."""
    return getattr(getattr(getattr(model, "model", model), "decoder", None), "project_out", None)


def check_relu(model: Any) -> None:
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        if not hasattr(layer, "fc1") or not hasattr(layer, "fc2"):
            raise ModelError(f"layer {i} of {type(model).__name__} has no fc1/fc2: expected {EXPECTED}.")
    act = getattr(model.config, "activation_function", None)
    if act != "relu":
        raise ModelError(
            f"the model's feed-forward activation is {act!r}, not 'relu': dead and n-gram neurons are defined "
            f"by ReLU outputs > 0 ({EXPECTED}). Use an OPT model (config.activation_function='relu')."
        )


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: Any, device: torch.device) -> torch.dtype:
    if dtype is None:
        # fp16 on GPUs as the paper ran OPT; fp32 on the CPU where fp16 matmuls are slow.
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float32": torch.float32, "fp32": torch.float32}[str(dtype)]  # fmt: skip
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r}: use float16, bfloat16 or float32") from None


def resolve_name(model: str) -> str:
    return str(DEMO_DIR) if model == "demo" else model


def load_tokenizer(source: str, **kwargs: Any) -> Any:
    """The model's tokenizer, or None (then data must be given as token ids)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception:
        return None


def load_config(model: str, revision: str | None) -> tuple[Any, str]:
    """The OPT config of a hub id / directory / "demo", and the name to load it by; checks it is OPT + ReLU."""
    from transformers import AutoConfig

    name = resolve_name(str(model))
    try:
        config = AutoConfig.from_pretrained(name, revision=revision)
    except Exception as e:
        raise ModelError(
            f"cannot find model {str(model)!r} as a local directory or in the Hugging Face cache "
            f"({type(e).__name__}: {e}). Check the id (e.g. facebook/opt-125m), download it first with "
            "`huggingface-cli download ID` when offline, or pass a local directory."
        ) from e
    if getattr(config, "model_type", None) != "opt":
        raise ModelError(
            f"{str(model)!r} is a {getattr(config, 'model_type', '?')!r} model, not OPT: expected {EXPECTED}. "
            "Pass an OPT checkpoint such as facebook/opt-125m."
        )
    if getattr(config, "activation_function", None) != "relu":
        raise ModelError(f"{str(model)!r} uses activation {config.activation_function!r}, not 'relu': expected {EXPECTED}.")
    return config, name


def model_dir(name: str, revision: str | None) -> Path | None:
    """The local folder holding a model's files (itself, or its snapshot in the HF cache)."""
    if Path(name).is_dir():
        return Path(name)
    try:
        from transformers.utils import cached_file

        return Path(cached_file(name, "config.json", revision=revision)).parent
    except Exception:
        return None


def commit_of(config: Any, name: str, revision: str | None) -> str | None:
    """The commit hash of the loaded files: the HF cache snapshot they come from, if any."""
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return commit
    folder = model_dir(name, revision)
    return folder.name if folder is not None and folder.parent.name == "snapshots" else revision


def parameter_bytes(config: Any, dtype: torch.dtype) -> int:
    """Approximate size of an OPT model's weights, from its config alone."""
    d, f, n = config.hidden_size, config.ffn_dim, config.num_hidden_layers
    per_layer = 4 * d * d + 2 * d * f
    embed = config.vocab_size * config.word_embed_proj_dim + config.max_position_embeddings * d
    return (n * per_layer + embed) * torch.tensor([], dtype=dtype).element_size()


def from_pretrained(name: str, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except Exception as e:
        raise ModelError(f"cannot load the weights of {name!r}: {type(e).__name__}: {e}") from e


def load_model(model: Any, *, dtype: Any = None, device_map: Any = None, revision: str | None = None,
               device: torch.device | None = None, on_host: bool = False, **load_kwargs: Any) -> LoadedModel:  # fmt: skip
    """`model`: hub id, local directory, "demo", or an already loaded transformers model.
    on_host: keep the weights in host memory (layer-major execution moves them per block)."""
    device = device or default_device()
    if not isinstance(model, (str, os.PathLike)):
        check_relu(model)
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        tok = load_tokenizer(name) if name else None
        dev = next(model.parameters()).device
        return LoadedModel(model, tok, name, getattr(model.config, "_commit_hash", None), dev)
    config, name = load_config(model, revision)
    kwargs: dict = {"revision": revision, "dtype": resolve_dtype(dtype, device), **load_kwargs}
    if device_map is not None:
        kwargs["device_map"] = device_map
    hf = from_pretrained(name, **kwargs)
    if device_map is None and not on_host:
        hf.to(device)
    elif device_map is not None:  # where accelerate put the first weights (inputs go there; all may be on disk)
        device = next((p.device for p in hf.parameters() if p.device.type != "meta"), device)
    hf.eval()
    check_relu(hf)
    return LoadedModel(hf, load_tokenizer(name, revision=revision), str(model), commit_of(config, name, revision),
                       device)  # fmt: skip


def skeleton_model(model: str, *, dtype: Any = None, revision: str | None = None,
                   device: torch.device | None = None) -> tuple[LoadedModel, list[Path]]:  # fmt: skip
    """The model built on the meta device (no weights in memory) and its safetensors files; the
    layer-major executor streams each layer's weights from them. ([], ...) when there are none."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    config, name = load_config(model, revision)
    folder = model_dir(name, revision)
    from .executors import safetensors_files

    files = safetensors_files(folder) if folder is not None else []
    torch_dtype = resolve_dtype(dtype, device)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    hf.eval()
    check_relu(hf)
    lm = LoadedModel(hf, load_tokenizer(name, revision=revision), str(model), commit_of(config, name, revision),
                     device)  # fmt: skip
    return lm, files

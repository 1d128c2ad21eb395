"""Load a model and its tokenizer through the Hugging Face cache (config once, weights, or a skeleton
whose layers stream from the checkpoint), and check its family has an architecture adapter."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import architectures
from .errors import ModelError
from .weights import (
    CheckpointTensors,
    ResidentLayers,
    StreamedLayers,
    checkpoint_files,
    key_renamer,
    load_into,
    move,  # fmt: skip
)

DEMO_DIR = Path(__file__).parent / "demo"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    model_id: str
    revision: str | None
    device: torch.device


def check_model(model: Any) -> None:
    """The model's family is registered, its layers and neuron modules are where the entry says, and its
    activation suits the family."""
    architectures.neuron_modules(model)
    architectures.check_activation(model, f"{type(model).__name__}")


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

    # transformers 5 builds a tokenizer of the family's class even for a folder without tokenizer files
    # (no vocabulary, made-up special ids): that is no tokenizer.
    folder = model_dir(source, kwargs.get("revision"))
    if folder is not None and not any((folder / f).exists() for f in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception:
        return None


def load_config(model: str, revision: str | None) -> tuple[Any, str]:
    """The config of a hub id / directory / "demo", and the name to load it by; checks its family is supported."""
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
    architectures.check_activation(config, repr(str(model)))
    return config, name


def model_dir(name: str, revision: str | None) -> Path | None:
    """The local folder holding a model's files (itself, or its snapshot in the HF cache)."""
    if Path(name).is_dir():
        return Path(name)
    try:
        from transformers.utils import cached_file

        found = cached_file(name, "config.json", revision=revision)
        return Path(found).parent if found else None
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
    """Size of a model's weights, from its config alone (the model built on the meta device)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return sum(p.numel() * p.element_size() for p in hf.parameters())


def from_pretrained(name: str, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except Exception as e:
        raise ModelError(f"cannot load the weights of {name!r}: {type(e).__name__}: {e}") from e


def load_model(model: Any, config: Any = None, *, dtype: Any = None, device_map: Any = None, revision: str | None = None,
               device: torch.device | None = None, on_host: bool = False, **load_kwargs: Any) -> LoadedModel:  # fmt: skip
    """`model`: hub id, local directory, "demo", or an already loaded transformers model.
    on_host: keep the weights in host memory (layer-major execution moves them per block)."""
    device = device or default_device()
    if not isinstance(model, (str, os.PathLike)):
        check_model(model)
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        tok = load_tokenizer(name) if name else None
        dev = next(model.parameters()).device
        return LoadedModel(model, tok, name, getattr(model.config, "_commit_hash", None), dev)
    if config is None:
        config, name = load_config(str(model), revision)
    else:
        name = resolve_name(str(model))
    kwargs: dict = {"revision": revision, "dtype": resolve_dtype(dtype, device), "config": config, **load_kwargs}
    if device_map is not None:
        kwargs["device_map"] = device_map
    hf = from_pretrained(name, **kwargs)
    if device_map is None and not on_host:
        hf.to(device)
    elif device_map is not None:  # where accelerate put the first weights (inputs go there; all may be on disk)
        device = next((p.device for p in hf.parameters() if p.device.type != "meta"), device)
    hf.eval()
    check_model(hf)
    return LoadedModel(hf, load_tokenizer(name, revision=revision), str(model), commit_of(config, name, revision),
                       device)  # fmt: skip


def skeleton_model(model: str, config: Any = None, *, dtype: Any = None, revision: str | None = None,
                   device: torch.device | None = None) -> tuple[LoadedModel, list[Path]]:  # fmt: skip
    """The model with its parameters on the meta device (no weights in memory; buffers such as rotary
    frequencies computed on the host) and its weight files (safetensors, else .bin); the layer-major
    executor streams each layer's weights from them. ([], ...) when there are none."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    if config is None:
        config, name = load_config(model, revision)
    else:
        name = resolve_name(str(model))
    folder = model_dir(name, revision)
    files = checkpoint_files(folder) if folder is not None else []
    with init_empty_weights(include_buffers=False):
        hf = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype, device))
    hf.tie_weights()  # the unembedding shares the embedding's tensor where the config ties them
    hf.eval()
    check_model(hf)
    lm = LoadedModel(hf, load_tokenizer(name, revision=revision), str(model), commit_of(config, name, revision),
                     device)  # fmt: skip
    return lm, files


def prepare_layer_major(
    model: Any, config: Any = None, *, dtype: Any, revision: str | None, device: torch.device
) -> tuple[LoadedModel, Any]:
    """The model with everything but its decoder layers on the device, and where its layers come from:
    streamed from the checkpoint's files (safetensors or .bin) when there are any, else held in host
    memory."""
    if isinstance(model, (str, Path)):
        lm, files = skeleton_model(str(model), config, dtype=dtype, revision=revision, device=device)
        if files:
            layers = architectures.for_config(lm.model.config).layers + "."
            tensors = CheckpointTensors(files, lm.model.base_model_prefix, key_renamer(lm.model))
            load_into(lm.model, tensors, device, lambda n: not n.startswith(layers))
            return lm, StreamedLayers(lm.model, tensors, device)
    lm = load_model(model, config, dtype=dtype, revision=revision, device=device, on_host=True)
    layers = architectures.for_config(lm.model.config).layers + "."
    move(lm.model, device, lambda n: not n.startswith(layers))
    lm.device = device
    return lm, ResidentLayers(lm.model, device)


def load_for(mode: str, model: Any, config: Any, *, dtype: Any, device_map: Any, revision: str | None, device: torch.device,
             max_memory: Any, offload_folder: Any) -> tuple[LoadedModel, Any]:  # fmt: skip
    """The model loaded the way `mode` runs it, and (layer-major) where its layers come from. config: the one
    `load_config` read (None for a model object), so it is read once."""
    if mode == "layer":
        return prepare_layer_major(model, config, dtype=dtype, revision=revision, device=device)
    extra: dict = {}
    if mode == "offload":
        device_map = device_map or "auto"
        extra = {k: v for k, v in {"max_memory": max_memory, "offload_folder": offload_folder}.items() if v}
    return load_model(
        model, config, dtype=dtype, device_map=device_map, revision=revision, device=device, **extra
    ), None

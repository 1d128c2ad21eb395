"""A checkpoint's tensors read a module at a time, never the whole model in host memory: from safetensors
files, or from pytorch `.bin` shards (many hub checkpoints have only those), each opened with
`torch.load(mmap=True, weights_only=True)` for one read and closed again, so the pages it touched are
released with it. Layer-major execution streams each layer's weights to the device this way."""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from . import architectures
from .architectures import decoder_layers
from .errors import ModelError
from .heap import release_free_heap


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a model folder: safetensors when it has them, else pytorch .bin ([] if neither)."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):  # fmt: skip
        index = folder / index_name
        if index.exists():
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / n for n in names]
        if (folder / single).exists():
            return [folder / single]
    return []


def safetensors_files(model_dir: Path) -> list[Path]:
    return [f for f in checkpoint_files(model_dir) if f.suffix == ".safetensors"]


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A weight file that cannot be read (truncated, corrupted) is a ModelError naming it and the fix."""
    try:
        yield
    except ModelError:
        raise
    except Exception as e:  # safetensors, torch and the OS raise several kinds
        raise ModelError(f"the weight file {path} cannot be read ({type(e).__name__}: {str(e)[:200]}): it is damaged "
                         "or incomplete; download the model again (huggingface-cli download ID --force-download)"
                         ) from None  # fmt: skip


def _keys(path: Path) -> list[str]:
    with _reading(path):
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                return list(fh.keys())
        return list(torch.load(path, mmap=True, weights_only=True, map_location="cpu").keys())


def key_renamer(model: torch.nn.Module) -> Callable[[str], str]:
    """transformers' own renames of checkpoint keys for this model, as from_pretrained applies them
    (GPT-NeoX's embed_out -> lm_head, legacy LayerNorm gamma/beta, ...); the identity where this
    version of transformers has none. Keys that transformers would fuse or split are not supported."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, rename_source_key

        mapping = get_model_conversion_mapping(model)  # type: ignore[arg-type]
        renamings = [t for t in mapping if isinstance(t, WeightRenaming)]
        names = dict.fromkeys(model.state_dict(), True)
        prefix = getattr(model, "base_model_prefix", None)
        return lambda key: rename_source_key(key, renamings, [], prefix, names)[0]
    except Exception:  # another transformers version: keys as stored
        return lambda key: key


class CheckpointTensors:
    """Where each of a model's tensors lies in its checkpoint files, by the model's name for it. Checkpoint
    keys may lack the model's base prefix (OPT's "decoder.layers.0...", GPT-2's "h.0...") or be renamed
    by transformers (`key_renamer`): each is indexed as stored, renamed, and with the prefix."""

    def __init__(self, files: list[Path], base_prefix: str, rename: Callable[[str], str] = lambda key: key) -> None:
        self.where: dict[str, tuple[Path, str]] = {}
        for f in files:
            for key in _keys(f):
                for name in (rename(key), key):
                    self.where.setdefault(name, (f, key))
                    if base_prefix and not name.startswith(f"{base_prefix}."):
                        self.where.setdefault(f"{base_prefix}.{name}", (f, key))

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def read(self, names: list[str], device: torch.device, dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
        """The named tensors on `device` in the given dtypes, each file opened once for all of its tensors."""
        missing = [n for n in names if n not in self.where]
        if missing:
            raise ModelError(f"tensor {missing[0]} is missing from the checkpoint's weight files")
        by_file: dict[Path, list[str]] = defaultdict(list)
        for n in names:
            by_file[self.where[n][0]].append(n)
        out: dict[str, torch.Tensor] = {}
        for f, wanted in by_file.items():
            with _reading(f):
                out.update(self._read_file(f, wanted, device, dtypes))
        return out

    def _read_file(self, f: Path, wanted: list[str], device: torch.device,
                   dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:  # fmt: skip
        out: dict[str, torch.Tensor] = {}
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt", device=str(device)) as fh:
                for n in wanted:
                    out[n] = fh.get_tensor(self.where[n][1]).to(dtypes[n])
        else:
            shard = torch.load(f, mmap=True, weights_only=True, map_location="cpu")
            for n in wanted:
                t = shard[self.where[n][1]]
                # A copy, never a view into the mapped file: the mapping goes with `shard`.
                out[n] = t.to(device=device, dtype=dtypes[n], copy=True)
            del shard
        return out


def _owners(model: torch.nn.Module) -> dict[int, list[tuple[torch.nn.Module, str, bool]]]:
    """id(tensor) -> every (module, attribute, is_parameter) holding it (tied weights have several)."""
    owners: dict[int, list] = defaultdict(list)
    for module in model.modules():
        for attr, p in module._parameters.items():
            if p is not None:
                owners[id(p)].append((module, attr, True))
        for attr, b in module._buffers.items():
            if b is not None:
                owners[id(b)].append((module, attr, False))
    return owners


def place(model: torch.nn.Module, tensors: dict[str, Any], new: dict[str, torch.Tensor]) -> None:
    """Replace each named tensor of `model` (name -> its current tensor in `tensors`) by `new[name]`, in every
    module holding it, so tied weights stay tied."""
    owners = _owners(model)
    for name, t in new.items():
        for module, attr, is_param in owners[id(tensors[name])]:
            if is_param:
                module._parameters[attr] = torch.nn.Parameter(t, requires_grad=False)
            else:
                module._buffers[attr] = t


def load_into(model: torch.nn.Module, source: CheckpointTensors, device: torch.device,
              include: Callable[[str], bool]) -> None:  # fmt: skip
    """Put the parameters and buffers of `model` whose names `include` accepts on `device`: parameters and
    persistent buffers from the checkpoint; non-persistent buffers (rotary frequencies, causal masks), which
    the skeleton computed on the host and from_pretrained does not read either, moved there."""
    params = dict(model.named_parameters())
    tensors = {**params, **dict(model.named_buffers())}
    chosen = {n: t for n, t in tensors.items() if include(n)}
    persistent = model.state_dict().keys()
    from_file = [n for n in chosen if n in params or (n in persistent and n in source)]
    new = source.read(from_file, device, {n: chosen[n].dtype for n in from_file})
    for n, t in chosen.items():
        if n not in new:
            new[n] = t.to(device)
    place(model, tensors, new)


def move(model: torch.nn.Module, device: torch.device | str, include: Callable[[str], bool]) -> None:
    """The parameters and buffers `include` accepts to `device`; to "meta", parameters are dropped (their
    memory freed) and buffers go to the host, where the skeleton keeps them."""
    params = dict(model.named_parameters())
    tensors = {**params, **dict(model.named_buffers())}

    def moved(n: str, t: torch.Tensor) -> torch.Tensor:
        if str(device) == "meta":
            return torch.empty_like(t, device="meta") if n in params else t.to("cpu")
        return t.to(device)

    place(model, tensors, {n: moved(n, t) for n, t in tensors.items() if include(n)})


# Where a layer-major run's layers come from, one at a time on the device.


class ResidentLayers:
    """Layer weights held in host memory (the loaded model), moved to the device once per block."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.layers = decoder_layers(model)
        self.device = device

    @contextlib.contextmanager
    def on_device(self, index: int) -> Iterator[Any]:
        layer = self.layers[index]
        layer.to(self.device, non_blocking=True)
        try:
            yield layer
        finally:
            layer.to("cpu")


class StreamedLayers:
    """Layer weights read from the checkpoint's files (safetensors or .bin shards) straight to the device
    once per block: host memory holds only the hidden states, so models larger than RAM run (OPT-66b)."""

    def __init__(self, model: Any, tensors: CheckpointTensors, device: torch.device) -> None:
        self.model = model
        self.layers = decoder_layers(model)
        self.prefix = architectures.for_config(model.config).layers
        self.tensors = tensors
        self.device = device

    @contextlib.contextmanager
    def on_device(self, index: int) -> Iterator[Any]:
        prefix = f"{self.prefix}.{index}."
        load_into(self.model, self.tensors, self.device, lambda n: n.startswith(prefix))
        try:
            yield self.layers[index]
        finally:
            move(self.model, "meta", lambda n: n.startswith(prefix))
            if self.device.type == "cpu":  # glibc would keep the freed layer's heap pages: host memory grew
                release_free_heap()  # by ~half a layer per layer streamed (measured, test_families)

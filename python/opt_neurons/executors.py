"""How the forward pass runs: all layers per batch ("memory", also used with accelerate offloading
via device_map), or layer-major ("layer"): the hidden states of a block of sequences wait in pinned
host memory while each layer's weights go to the device once per block and the whole block runs
through it (FlexGen's schedule), so weight transfers are amortised over the block.

Both feed the same fc1 hooks with the same micro-batches, so they give identical statistics.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import schedule
from .capture import BitCapture
from .data import TokenData
from .errors import ModelError, OutOfMemoryError
from .model import LoadedModel, decoder_layers

EXECUTIONS = ("auto", "memory", "offload", "layer")


def rows_of(data: TokenData, begin: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids (batch, length), and the flat token ids and positions of its rows."""
    length = int(data.lengths[begin])
    ids = data.tokens[begin:end, :length]
    return ids, ids.reshape(-1), np.tile(np.arange(length), end - begin)


class _ForwardDone(Exception):
    """Raised by the last layer's fc1 hook: nothing after that output feeds a statistic."""


@contextlib.contextmanager
def ending_at(fc1: torch.nn.Module, enabled: bool = True) -> Iterator[Callable[[Callable[[], Any]], Any]]:
    """Forward passes end once `fc1` (the last layer's, hooked after the bit capture) has run: its
    layer's fc2, the final LayerNorm and project_out would cost ~1/(3L) of the weights' work for
    nothing. Yields `run(forward)`: forward's result, or None when the pass ended there. Not with
    accelerate's hooks (offload), whose post-forward steps would be skipped."""

    def stop(module: Any, inputs: Any, output: Any) -> None:
        raise _ForwardDone

    def run(forward: Callable[[], Any]) -> Any:
        try:
            return forward()
        except _ForwardDone:
            return None

    handle = fc1.register_forward_hook(stop) if enabled else None
    try:
        yield run
    finally:
        if handle is not None:
            handle.remove()


def has_accelerate_hooks(model: torch.nn.Module) -> bool:
    return any(hasattr(m, "_hf_hook") for m in model.modules())


@contextlib.contextmanager
def out_of_memory_hint(batch_size: int) -> Iterator[None]:
    try:
        yield
    except torch.OutOfMemoryError as e:
        raise OutOfMemoryError(
            f"the device ran out of memory with batch_size={batch_size}: lower batch_size, or use "
            f"execution='layer' (one layer on the device at a time). Counts so far are kept in the "
            f"checkpoint when `out` is set. ({e})"
        ) from e


def run_memory(lm: LoadedModel, data: TokenData, capture: BitCapture, *, start: schedule.Cursor, batch_size: int,
               on_progress: Callable[[schedule.Cursor], None]) -> None:  # fmt: skip
    """Every batch through the decoder up to the last fc1 (see ending_at; no LM head); with a device_map
    accelerate moves weights (and the whole decoder runs). Activation-only batches fill the time the
    host needs to count the detail ones (schedule.py)."""
    decoder = lm.model.model.decoder
    last_fc1 = decoder_layers(lm.model)[-1].fc1
    with torch.inference_mode(), out_of_memory_hint(batch_size), \
            ending_at(last_fc1, enabled=not has_accelerate_hooks(lm.model)) as run:  # fmt: skip
        for begin, end, done in schedule.interleaved(data, start, batch_size, capture.busy):
            ids, flat, pos = rows_of(data, begin, end)
            capture.set_rows(flat, pos, data.detail_rows(begin, end), first_sequence=begin)
            run(lambda: decoder(input_ids=torch.from_numpy(ids).to(lm.device), use_cache=False))
            capture.commit(done)
            if done.detail == data.n_detail:  # the last block of detail rows is counted while the rest runs
                capture.send_block()
            on_progress(done)
    capture.flush()


class ResidentLayers:
    """Layer weights held in host memory (the loaded model), moved to the device once per block."""

    def __init__(self, lm: LoadedModel, device: torch.device) -> None:
        self.layers = decoder_layers(lm.model)
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
    """Layer weights read from the checkpoint's safetensors files straight to the device once per
    block: host memory holds only the hidden states, so models larger than RAM run (OPT-66b)."""

    def __init__(self, model: Any, files: list[Path], device: torch.device) -> None:
        from safetensors import safe_open

        self.layers = decoder_layers(model)
        self.device = device
        self.where: dict[str, tuple[Path, str]] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():
                    self.where[key.removeprefix("model.")] = (f, key)

    def load_into(self, module: torch.nn.Module, prefix: str, device: torch.device) -> None:
        from safetensors import safe_open

        module.to_empty(device=device)
        state = {}
        for name, p in module.state_dict().items():
            key = f"{prefix}{name}"
            if key not in self.where:
                raise ModelError(f"tensor {key} is missing from the checkpoint's safetensors files")
            f, stored = self.where[key]
            with safe_open(str(f), framework="pt", device=str(device)) as fh:
                state[name] = fh.get_tensor(stored).to(p.dtype)
        module.load_state_dict(state)

    @contextlib.contextmanager
    def on_device(self, index: int) -> Iterator[Any]:
        layer = self.layers[index]
        self.load_into(layer, f"decoder.layers.{index}.", self.device)
        try:
            yield layer
        finally:
            layer.to("meta")


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    return [single] if single.exists() else []


def embed(decoder: Any, ids: torch.Tensor) -> torch.Tensor:
    """The decoder's input: token embeddings (through project_in) plus learned positions 0..L-1."""
    x = decoder.embed_tokens(ids)
    positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    pos = decoder.embed_positions(torch.ones_like(ids), 0, position_ids=positions)
    if decoder.project_in is not None:
        x = decoder.project_in(x)
    return x + pos.to(x.device)


def run_layer_major(lm: LoadedModel, data: TokenData, capture: BitCapture, source: Any, *, start: schedule.Cursor,
                    batch_size: int, block_size: int, on_progress: Callable[[schedule.Cursor], None]) -> None:  # fmt: skip
    """Blocks of sequences through one layer at a time; hidden states wait in pinned host memory."""
    from transformers.masking_utils import create_causal_mask

    decoder = lm.model.model.decoder
    device = source.device
    pin = device.type == "cuda"
    last_fc1 = source.layers[-1].fc1
    with torch.inference_mode(), out_of_memory_hint(batch_size), \
            ending_at(last_fc1, enabled=not has_accelerate_hooks(lm.model)) as run:  # fmt: skip
        for block in schedule.blocks(data, start, batch_size, block_size):
            hidden = []
            for begin, end, _ in block:
                ids = torch.from_numpy(rows_of(data, begin, end)[0]).to(device)
                h = embed(decoder, ids).to("cpu")
                hidden.append(h.pin_memory() if pin else h)
            for index in range(len(source.layers)):
                with source.on_device(index) as layer:
                    for k, (begin, end, _) in enumerate(block):
                        _, flat, pos = rows_of(data, begin, end)
                        h = hidden[k].to(device, non_blocking=True)
                        mask = create_causal_mask(config=decoder.config, inputs_embeds=h, attention_mask=None,
                                                  cache=None)  # fmt: skip
                        positions = torch.arange(h.shape[1], device=device).expand(h.shape[0], -1)
                        capture.set_rows(flat, pos, data.detail_rows(begin, end), first_sequence=begin)
                        out = run(lambda: layer(h, attention_mask=mask, position_ids=positions))
                        capture.commit(None)  # part of a block: not a resumable point
                        if end == data.n_detail or k == len(block) - 1:
                            # The layer's detail rows are all in: counted while the device goes on
                            # (its other batches, the next layer's weights), not after.
                            capture.send_block()
                        if out is not None:  # None: the last layer, ended at its fc1
                            hidden[k] = out.to("cpu").pin_memory() if pin else out.to("cpu")
            done = block[-1][2]
            capture.commit(done)  # nothing more to hand over: every layer of the block is committed
            on_progress(done)
    capture.flush()


NON_LAYER_MODULES = ("embed_tokens", "embed_positions", "project_in", "project_out", "final_layer_norm")


def choose(requested: str, *, config: Any, dtype: torch.dtype, device: torch.device, device_map: Any) -> tuple[str, str]:
    """The execution mode to use, and why (printed and stored in the metadata)."""
    if requested not in EXECUTIONS:
        raise ModelError(f"unknown execution {requested!r}: use one of {', '.join(EXECUTIONS)}")
    if device_map is not None and requested in ("auto", "offload"):
        return "offload", f"device_map={device_map!r}: accelerate places and moves the weights"
    if requested != "auto":
        return requested, "requested"
    if device.type != "cuda":
        return "memory", "no GPU: the whole model runs in host memory"
    from .model import parameter_bytes

    need = parameter_bytes(config, dtype)
    free = torch.cuda.mem_get_info(device)[0]
    if need < 0.8 * free:
        return "memory", f"weights ({need / 1e9:.1f} GB) fit in the GPU's {free / 1e9:.1f} GB free"
    return "layer", f"weights ({need / 1e9:.1f} GB) exceed 80% of the GPU's {free / 1e9:.1f} GB free: layer-major"


def prepare_layer_major(model: Any, *, dtype: Any, revision: str | None, device: torch.device) -> tuple[LoadedModel, Any]:
    """The model with its non-layer modules on the device, and where its layers come from:
    streamed from safetensors when the checkpoint has them, else held in host memory."""
    from .model import load_model, skeleton_model

    if isinstance(model, (str, Path)):
        lm, files = skeleton_model(str(model), dtype=dtype, revision=revision, device=device)
        if files:
            source = StreamedLayers(lm.model, files, device)
            decoder = lm.model.model.decoder
            for name in NON_LAYER_MODULES:
                module = getattr(decoder, name, None)
                if module is not None:
                    source.load_into(module, f"decoder.{name}.", device)
            if lm.model.config.tie_word_embeddings:
                lm.model.lm_head.weight = decoder.embed_tokens.weight
            else:
                source.load_into(lm.model.lm_head, "lm_head.", device)
            return lm, source
    lm = load_model(model, dtype=dtype, revision=revision, device=device, on_host=True)
    decoder = lm.model.model.decoder
    for name in NON_LAYER_MODULES:
        module = getattr(decoder, name, None)
        if module is not None:
            module.to(device)
    lm.model.lm_head.to(device)
    lm.device = device
    return lm, ResidentLayers(lm, device)

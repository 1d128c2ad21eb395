"""How the forward pass runs: all layers per batch ("memory", also used with accelerate offloading
via device_map), or layer-major ("layer"): the hidden states of a block of sequences wait in pinned
host memory while each layer's weights go to the device once per block and the whole block runs
through it (FlexGen's schedule), so weight transfers are amortised over the block.

Both feed the same neuron-module hooks with the same micro-batches, so they give identical statistics.
Layer-major needs no code per model family: the model's own forward runs once per batch with every
decoder layer replaced by a recorder, which keeps the arguments each layer would receive (hidden
states, attention mask, rotary position embeddings, position ids, ALiBi, ...); the layers are then
run one at a time on those arguments.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from . import architectures, schedule
from .capture import BitCapture
from .data import TokenData
from .errors import ModelError, OutOfMemoryError
from .model import LoadedModel
from .params import EXECUTIONS


def rows_of(data: TokenData, begin: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids (batch, length), and the flat token ids and positions of its rows."""
    length = int(data.lengths[begin])
    ids = data.tokens[begin:end, :length]
    return ids, ids.reshape(-1), np.tile(np.arange(length), end - begin)


class _ForwardDone(Exception):
    """Raised by the last layer's neuron-module hook: nothing after that output feeds a statistic."""


@contextlib.contextmanager
def ending_at(module: torch.nn.Module, enabled: bool = True) -> Iterator[Callable[[Callable[[], Any]], Any]]:
    """Forward passes end once `module` (the last layer's neuron module, hooked after the bit capture) has
    run: its layer's down projection, the final norm and project_out would cost ~1/(3L) of the weights'
    work for nothing. Yields `run(forward)`: forward's result, or None when the pass ended there. Not with
    accelerate's hooks (offload), whose post-forward steps would be skipped."""

    def stop(module: Any, inputs: Any, output: Any) -> None:
        raise _ForwardDone

    def run(forward: Callable[[], Any]) -> Any:
        try:
            return forward()
        except _ForwardDone:
            return None

    handle = module.register_forward_hook(stop) if enabled else None
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
    """Every batch through the decoder up to the last neuron module (see ending_at; no LM head); with a
    device_map accelerate moves weights (and the whole decoder runs). Activation-only batches fill the
    time the host needs to count the detail ones (schedule.py)."""
    body = architectures.body(lm.model)
    last = architectures.neuron_modules(lm.model)[-1]
    with torch.inference_mode(), out_of_memory_hint(batch_size), \
            ending_at(last, enabled=not has_accelerate_hooks(lm.model)) as run:  # fmt: skip
        for begin, end, done in schedule.interleaved(data, start, batch_size, capture.busy):
            ids, flat, pos = rows_of(data, begin, end)
            capture.set_rows(flat, pos, data.detail_rows(begin, end), first_sequence=begin,
                             source_ids=data.source_ids_of(begin, end))  # fmt: skip
            run(functools.partial(body, input_ids=torch.from_numpy(ids).to(lm.device), use_cache=False))
            capture.commit(done)
            if done.detail == data.n_detail:  # the last block of detail rows is counted while the rest runs
                capture.send_block()
            on_progress(done)
    capture.flush()


class _InputsRecorded(Exception):
    """Raised by the last layer's recorder: every layer's arguments are in."""


class _Relay:
    """What a recording layer returns to the model's loop: indexing gives itself back, so loops that
    take `outputs[0]` and loops that use the output as it is both hand it to the next recorder."""

    def __getitem__(self, index: Any) -> _Relay:
        return self


def layer_arguments(body: Any, layers: Any, ids: torch.Tensor) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
    """Run the model's own forward on `ids` with every decoder layer replaced by a recorder: the first
    layer's hidden states, and each layer's (args, kwargs) (attention masks can differ by layer, e.g.
    Gemma-2's sliding windows)."""
    calls: list[tuple[tuple, dict]] = []

    def recorder(last: bool) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            calls.append((args, kwargs))
            if last:
                raise _InputsRecorded
            return _Relay()

        return record

    own = [layer.__dict__.get("forward") for layer in layers]  # e.g. accelerate's wrapper, put back after
    for i, layer in enumerate(layers):
        layer.forward = recorder(i == len(layers) - 1)
    try:
        body(input_ids=ids, use_cache=False)
    except _InputsRecorded:
        pass
    finally:
        for layer, forward in zip(layers, own):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
    if len(calls) != len(layers):
        raise ModelError(f"{type(body).__name__}'s forward called {len(calls)} of its {len(layers)} layers: "
                         "layer-major execution cannot replay it; use execution='memory' or 'offload'")  # fmt: skip
    args, kwargs = calls[0]
    hidden = args[0] if args else kwargs["hidden_states"]
    return hidden, calls


def call_layer(layer: Any, hidden: torch.Tensor, recorded: tuple[tuple, dict]) -> torch.Tensor:
    """The layer on `hidden` with the rest of the arguments the model's forward gave it."""
    args, kwargs = recorded
    out = layer(hidden, *args[1:], **kwargs) if args else layer(**{**kwargs, "hidden_states": hidden})
    return out[0] if isinstance(out, (tuple, list)) else out


def run_layer_major(lm: LoadedModel, data: TokenData, capture: BitCapture, source: Any, *, start: schedule.Cursor,
                    batch_size: int, block_size: int, on_progress: Callable[[schedule.Cursor], None]) -> None:  # fmt: skip
    """Blocks of sequences through one layer at a time; hidden states wait in pinned host memory. A layer's
    other arguments are recorded once per batch shape in each block: they depend on the shape only
    (no padding: positions 0..L-1, causal masks)."""
    body = architectures.body(lm.model)
    device = source.device
    pin = device.type == "cuda"
    last = architectures.get_path(source.layers[-1], architectures.for_config(lm.model.config).neurons)
    with torch.inference_mode(), out_of_memory_hint(batch_size), \
            ending_at(last, enabled=not has_accelerate_hooks(lm.model)) as run:  # fmt: skip
        for block in schedule.blocks(data, start, batch_size, block_size):
            hidden: list[torch.Tensor] = []
            arguments: dict[tuple, list] = {}
            for begin, end, _ in block:
                ids = torch.from_numpy(rows_of(data, begin, end)[0]).to(device)
                h, calls = layer_arguments(body, source.layers, ids)
                arguments.setdefault(tuple(ids.shape), calls)
                h = h.to("cpu")
                hidden.append(h.pin_memory() if pin else h)
            for index in range(len(source.layers)):
                with source.on_device(index) as layer:
                    for k, (begin, end, _) in enumerate(block):
                        _, flat, pos = rows_of(data, begin, end)
                        h = hidden[k].to(device, non_blocking=True)
                        recorded = arguments[(end - begin, int(data.lengths[begin]))][index]
                        capture.set_rows(flat, pos, data.detail_rows(begin, end), first_sequence=begin,
                                         source_ids=data.source_ids_of(begin, end))  # fmt: skip
                        out = run(functools.partial(call_layer, layer, h, recorded))
                        capture.commit(None)  # part of a block: not a resumable point
                        if end == data.n_detail or k == len(block) - 1:
                            # The layer's detail rows are all in: counted while the device goes on
                            # (its other batches, the next layer's weights), not after.
                            capture.send_block()
                        if out is not None:  # None: the last layer, ended at its neuron module
                            hidden[k] = out.to("cpu").pin_memory() if pin else out.to("cpu")
            done = block[-1][2]
            capture.commit(done)  # nothing more to hand over: every layer of the block is committed
            on_progress(done)
    capture.flush()


def choose(
    requested: str, *, config: Any, dtype: torch.dtype, device: torch.device, device_map: Any
) -> tuple[str, str]:
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

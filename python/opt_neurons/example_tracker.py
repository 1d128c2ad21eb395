"""Example positions per neuron while the forward pass runs (METHOD.md "Examples").

On the device, in the capture hook: the top k firing detail rows of each neuron by value (a running
(k, n_neurons) top k per layer, merged with each committed batch's), and the sum and maximum of the
firing values over all rows. On the host, in the counting thread: a uniform random sample of k firing
detail positions per neuron from the same bits the statistics count (the Rust core's bottom-k sampler).
A batch's device results wait until the batch is committed, so an interrupted forward pass adds
nothing; the device state is copied to the host only at checkpoints and at the end.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _core
from .errors import ExamplesStateError
from .host_thread import run_for
from .topk import EMPTY_ID, batch_topk, merge_topk

FILE = "examples.bin"
PREVIOUS = "examples.prev.bin"


class ExampleTracker:
    def __init__(self, n_layers: int, n_neurons: int, k: int, seed: int, *, threshold: float = 0.0,
                 sequence_offset: int = 0, state: Any = None) -> None:  # fmt: skip
        self.core = state if state is not None else _core.Examples(n_layers, n_neurons, k, seed)
        # The counting thread's update holds the core mutably with the GIL released; any other use of the
        # core meanwhile would fail ("Already mutably borrowed"), so every use takes this lock, whose wait
        # releases the GIL.
        self.lock = threading.Lock()
        self.n_layers, self.n_neurons, self.k = n_layers, n_neurons, k
        self.threshold = float(threshold)  # fires: value > threshold (METHOD.md)
        self.sequence_offset = sequence_offset  # this shard's first detail sequence in the whole data
        self.rows = int(self.core.summed_rows)  # rows committed into the device sums
        self.device: dict[int, list[torch.Tensor]] = {}  # layer -> [values, ids, sums, maxima]
        self.pending: list[tuple] = []  # (layer, values, ids, sums, maxima) of the uncommitted batch
        self.sequences = np.zeros(0, np.uint32)  # each detail row's sequence (data index) in the next batch
        self.ids: np.ndarray = np.zeros(0, np.int64)
        self.ids_on: dict[torch.device, torch.Tensor] = {}
        # Seconds the forward pass's thread spent here (observe and commit): the examples' own cost, measured
        # inside the run (on a GPU, the kernel launches only; the kernels run asynchronously).
        self.seconds = 0.0

    def set_rows(self, positions: np.ndarray, first_sequence: int | None) -> None:
        """Detail rows' positions of the next forward pass, whose first sequence is `first_sequence`
        of this process's data (sequences start at position 0)."""
        if len(positions) and first_sequence is None:
            raise ValueError("examples need set_rows(..., first_sequence=) (the batch's first sequence)")
        starts = np.cumsum(positions == 0) - 1
        self.sequences = (starts + (first_sequence or 0) + self.sequence_offset).astype(np.uint32)
        self.ids = (self.sequences.astype(np.int64) << 32) | positions.astype(np.int64)
        self.ids_on = {}

    def _ids(self, device: torch.device) -> torch.Tensor:
        if device not in self.ids_on:
            self.ids_on[device] = torch.from_numpy(self.ids).to(device, non_blocking=True)
        return self.ids_on[device]

    def observe(self, layer: int, x: torch.Tensor, n_detail: int, fired: torch.Tensor | None = None) -> None:
        """A layer's (rows, F) activations of the running batch; the first `n_detail` are detail rows.
        `fired`: x > threshold, if at hand."""
        t0 = time.perf_counter()
        self.pending.append(self._observe(layer, x, n_detail, x > self.threshold if fired is None else fired))
        self.seconds += time.perf_counter() - t0

    def _observe(self, layer: int, x: torch.Tensor, n_detail: int, fired: torch.Tensor) -> tuple:
        if self.on_host(x):
            return (layer, *run_for(x, self._observe_on_host, layer, x, n_detail, fired))
        # float64: the sums of fp16 / fp32 values stay exact in practice, so they do not depend on batching.
        sums = x.masked_fill(~fired, 0).sum(0, dtype=torch.float64 if x.device.type != "mps" else torch.float32)
        maxima = self._firing_maxima(x.amax(0).float())
        v = i = None
        if n_detail:
            v, rows = batch_topk(x[:n_detail], self.k, self.threshold, fired[:n_detail])
            i = self._ids(x.device)[rows].masked_fill(v == float("-inf"), EMPTY_ID)
        return layer, v, i, sums, maxima

    @staticmethod
    def on_host(x: torch.Tensor) -> bool:
        return x.device.type == "cpu"

    def _firing_maxima(self, maxima: torch.Tensor) -> torch.Tensor:
        """Each neuron's largest value over the batch -> its largest firing value (-inf: none fired)."""
        return maxima.masked_fill_(~(maxima > self.threshold), float("-inf"))

    def _observe_on_host(self, layer: int, x: torch.Tensor, n_detail: int, fired: torch.Tensor) -> tuple:
        """observe() on the CPU, the same results from one pass over the firing entries alone (the Rust
        core's scan_batch): the dense keys and top k of every row cost more there than the forward pass
        (RESULTS.md), and a sync costs nothing. Only detail entries at or above the committed top k's k-th
        value can enter it (a later row must beat it; an equal one may win the tie only if earlier)."""
        # The scan reads rows in place: a strided neuron tensor (a view of a fused output) is copied first.
        xn = np.ascontiguousarray(x.numpy() if x.dtype == torch.float32 else x.float().numpy())
        floor = self._state(layer, x.device)[0][-1].numpy()
        mask = np.ascontiguousarray(fired.numpy()).view(np.uint8)
        v, r, sums, maxima = _core.Examples.scan_batch(xn, mask, n_detail, floor, self.k)
        if not n_detail:
            return None, None, torch.from_numpy(sums), torch.from_numpy(maxima)
        ids = np.where(v == -np.inf, EMPTY_ID, self.ids[r])
        return torch.from_numpy(v), torch.from_numpy(ids), torch.from_numpy(sums), torch.from_numpy(maxima)

    def _state(self, layer: int, device: torch.device) -> list[torch.Tensor]:
        if layer not in self.device:
            with self.lock:
                v, i, s, m = self.core.device_state(layer)
            shape = (self.k, self.n_neurons)
            dtype64 = torch.float64 if device.type != "mps" else torch.float32
            self.device[layer] = [torch.from_numpy(v.reshape(shape)).to(device),
                                  torch.from_numpy(i.view(np.int64).reshape(shape)).to(device),
                                  torch.from_numpy(s).to(device, dtype64), torch.from_numpy(m).to(device)]  # fmt: skip
        return self.device[layer]

    def commit(self, n_rows: int) -> None:
        """The running batch (`n_rows` rows in all) is committed: fold its results in."""
        t0 = time.perf_counter()
        for layer, v, i, sums, maxima in self.pending:
            st = self._state(layer, sums.device)
            if v is not None and self.on_host(v):
                # Only the neurons the batch has a candidate for can change (few, once the k-th values rise).
                cols = (v[0] > float("-inf")).nonzero().squeeze(1)
                st[0][:, cols], st[1][:, cols] = merge_topk(
                    st[0][:, cols], st[1][:, cols], v[:, cols], i[:, cols], self.k
                )
            elif v is not None:
                st[0], st[1] = merge_topk(st[0], st[1], v, i, self.k)
            st[2] += sums
            torch.maximum(st[3], maxima, out=st[3])
        if any(p[0] == 0 for p in self.pending):  # layer-major commits one layer's batch at a time
            self.rows += n_rows
        self.pending = []
        self.seconds += time.perf_counter() - t0

    def drop(self) -> None:
        self.pending = []

    def count(self, bits_by_layer: dict[int, list[np.ndarray]], sequences: np.ndarray, positions: np.ndarray) -> None:
        """The random sample: the same detail bits the statistics count (counting thread)."""
        with self.lock:
            self.core.update_layers(list(bits_by_layer), list(bits_by_layer.values()), sequences, positions)

    def sync(self) -> Any:
        """Copy the device state into the host state (at checkpoints and at the end); returns it."""
        with self.lock:
            for layer, (v, i, s, m) in self.device.items():
                self.core.set_device_state(layer, np.ascontiguousarray(v.cpu().numpy()),
                                           np.ascontiguousarray(i.cpu().numpy().view(np.uint64)),
                                           s.double().cpu().numpy(), m.cpu().numpy())  # fmt: skip
            self.core.set_summed_rows(self.rows)
        return self.core

    def save(self, folder: Path) -> None:
        """Write the state beside the checkpoint's state.bin (before it: see `load`), atomically."""
        self.sync()
        tmp = folder / f"{FILE}.{os.getpid()}.tmp"
        with self.lock:
            self.core.save(os.fspath(tmp))
        if (folder / FILE).exists():
            os.replace(folder / FILE, folder / PREVIOUS)
        os.replace(tmp, folder / FILE)


def load(folder: Path, rows: int, detail_rows: int) -> Any:
    """The saved examples state that holds exactly `rows` rows (`detail_rows` sampled): the latest, or
    the one before when the run stopped between writing it and the statistics' state."""
    found = []
    for name in (FILE, PREVIOUS):
        path = folder / name
        if not path.exists():
            continue
        try:
            state = _core.Examples.load(os.fspath(path))
        except ValueError as e:
            raise ExamplesStateError(f"{path}: {e}: delete the folder {folder} to start over") from None
        if state.summed_rows == rows and state.sampled_rows == detail_rows:
            return state
        found.append(f"{name} holds {state.summed_rows} rows")
    raise ExamplesStateError(f"the checkpoint in {folder} has no examples state of its {rows} rows "
                             f"({'; '.join(found) or 'none saved'}): delete that folder to start over")  # fmt: skip

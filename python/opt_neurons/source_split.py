"""Per-source activation counts of one batch (METHOD.md "Sources"), summed where the activations are (the
device): only a (sources, neurons) count per layer leaves it, with the bits."""

from __future__ import annotations

import numpy as np
import torch


class SourceSplit:
    """The rows of one forward batch grouped by source: `count(x)` gives each source's activations per neuron.

    The rows are put in source order once per batch (a stable argsort of their source ids, skipped when
    they are in order already); each layer's fired rows are then gathered in that order and summed over
    each source's stretch: one pass over a byte per (row, neuron), whatever the number of sources."""

    def __init__(self, source_ids: np.ndarray, n_sources: int) -> None:
        ids = np.asarray(source_ids, dtype=np.int64)
        self.n_sources = n_sources
        self.rows = np.bincount(ids, minlength=n_sources).astype(np.uint64)  # rows of each source
        in_order = bool(np.all(ids[:-1] <= ids[1:])) if len(ids) else True
        self.order = None if in_order else np.argsort(ids, kind="stable")
        self.present = np.flatnonzero(self.rows)
        self.starts = np.concatenate([[0], np.cumsum(self.rows)])[self.present].astype(np.int64)
        self.ends = self.starts + self.rows[self.present].astype(np.int64)
        self._device_order: dict[torch.device, torch.Tensor] = {}

    def count(self, fired: torch.Tensor) -> torch.Tensor:
        """(rows, F) bool (output > threshold) -> (n_sources, F) int64 on its device: rows of each source
        where each neuron fires."""
        if not fired.is_cuda:  # numpy's byte sums beat torch's bool sums on the CPU (as in capture.count_active)
            fired_np = fired.numpy().view(np.uint8)
            if self.order is not None:
                fired_np = fired_np[self.order]
            sums = np.zeros((self.n_sources, fired.shape[1]), dtype=np.int64)
            for s, a, b in zip(self.present.tolist(), self.starts.tolist(), self.ends.tolist()):
                fired_np[a:b].sum(0, dtype=np.int64, out=sums[s])  # np.add.reduceat is several times slower
            return torch.from_numpy(sums)
        out = torch.zeros((self.n_sources, fired.shape[1]), dtype=torch.int64, device=fired.device)
        return self.count_tensor(fired, out)

    def count_tensor(self, fired: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`count` on the device: (rows, F) bool -> `out` (n_sources, F) int64 filled in with tensor ops."""
        if self.order is not None:
            order = self._device_order.get(fired.device)
            if order is None:
                order = self._device_order[fired.device] = torch.from_numpy(self.order).to(fired.device)
            fired = fired.index_select(0, order)
        for s, a, b in zip(self.present.tolist(), self.starts.tolist(), self.ends.tolist()):
            out[s] = fired[a:b].sum(0)
        return out

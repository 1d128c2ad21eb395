"""Top k firing positions per neuron by activation value, reduced on the device (METHOD.md "Examples").

Order (the tie rule): larger value first; equal values by (sequence, position) ascending, i.e. the
earlier position in the data first. Ids are `sequence << 32 | position` (int64), which sort in data
order. Only firing positions (value > threshold) count; empty slots hold (-inf, EMPTY_ID).
"""

from __future__ import annotations

import torch

EMPTY_ID = (1 << 63) - 1


def _ordered(v: torch.Tensor) -> torch.Tensor:
    """int64 that sorts like the float values of `v` (float16 / bfloat16 / float32; -0.0 as +0.0)."""
    v = v + 0.0  # -0.0 -> +0.0 (equal values must get equal keys)
    bits = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}[v.dtype]
    b = v.view(bits).to(torch.int64)
    # Negative floats: the magnitude bits sort backwards; flipping them restores the order.
    return torch.where(b < 0, b ^ (2 ** (v.element_size() * 8 - 1) - 1), b)


def batch_topk(x: torch.Tensor, k: int, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, F) activations -> (values float32 (k', F), row indices int64 (k', F)), k' = min(k, rows):
    the k' firing rows of each neuron with the largest values, equal values by smaller row index
    (the rows are in data order), non-firing slots -inf. The set is exact: columns where the k'-th
    and the next value tie are redone with keys that include the row index."""
    n = x.shape[0]
    kk = min(k, n)
    m = x.masked_fill(~(x > threshold), float("-inf"))
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        m = m.float()
    if kk < n:
        v, i = m.topk(kk + 1, dim=0)
        tied = (v[kk - 1] == v[kk]) & (v[kk - 1] > float("-inf"))
        v, i = v[:kk], i[:kk]
        if bool(tied.any()):
            cols = tied.nonzero().squeeze(1)
            sub = m[:, cols]
            rows = torch.arange(n, device=x.device, dtype=torch.int64).unsqueeze(1)
            key = _ordered(sub) * (1 << 32) + ((1 << 32) - 1 - rows)  # value, then the earlier row
            _, ti = key.topk(kk, dim=0)
            v[:, cols] = sub.gather(0, ti)
            i[:, cols] = ti
    else:
        v, i = m.sort(dim=0, descending=True, stable=True)
    return v.float(), i


def merge_topk(values: torch.Tensor, ids: torch.Tensor, new_values: torch.Tensor, new_ids: torch.Tensor,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The best k of two (., F) top lists by the tie rule: sorted by id, then stably by value."""
    v = torch.cat([values, new_values])
    i = torch.cat([ids, new_ids])
    i, order = i.sort(dim=0)
    v = v.gather(0, order)
    v, order = v.sort(dim=0, descending=True, stable=True)
    i = i.gather(0, order)
    return v[:k].contiguous(), i[:k].contiguous()


def row_ids(indices: torch.Tensor, first_sequence: int, length: int) -> torch.Tensor:
    """Row indices of a batch of equal-length sequences starting at `first_sequence` -> example ids."""
    return ((indices // length + first_sequence) << 32) | (indices % length)

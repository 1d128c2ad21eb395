"""Top k firing positions per neuron by activation value, reduced on the device (METHOD.md "Examples").

Order (the tie rule): larger value first; equal values by (sequence, position) ascending, i.e. the
earlier position in the data first. Ids are `sequence << 32 | position` (int64), which sort in data
order. Only firing positions (value > threshold) count; empty slots hold (-inf, EMPTY_ID).
"""

from __future__ import annotations

import torch

EMPTY_ID = (1 << 63) - 1


def sort_keys(x: torch.Tensor, fired: torch.Tensor) -> torch.Tensor:
    """(rows, F) -> integer keys that sort like (value, then the earlier row), non-firing rows lowest.

    The float's bits as a signed integer sort like the values once negative ones have their magnitude bits
    flipped; the row's complement fills the low bits. 16-bit floats of up to 65,536 rows fit int32 keys
    (twice their memory), others int64. One kernel chain, no host synchronisation: exact for any ties."""
    n = x.shape[0]
    low = torch.arange(n, device=x.device)
    if x.element_size() == 2 and x.dtype.is_floating_point and n <= 1 << 16:
        key = x.view(torch.int16).to(torch.int32)
        key = torch.where(key < 0, key ^ 0x7FFF, key)
        key = key.bitwise_left_shift_(16).bitwise_or_((0xFFFF - low).to(torch.int32)[:, None])
        return key.masked_fill_(~fired, torch.iinfo(torch.int32).min)
    bits = x.float() if x.element_size() != 4 or not x.dtype.is_floating_point else x
    key = bits.view(torch.int32).to(torch.int64)
    key = torch.where(key < 0, key ^ 0x7FFFFFFF, key)
    key = key.mul_(1 << 32).add_((0xFFFFFFFF - low)[:, None])
    return key.masked_fill_(~fired, torch.iinfo(torch.int64).min)


def batch_topk(x: torch.Tensor, k: int, threshold: float, fired: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(rows, F) activations -> (values float32 (k', F), row indices int64 (k', F)), k' = min(k, rows):
    the k' firing rows of each neuron with the largest values, equal values by smaller row index (the
    rows are in data order); non-firing slots hold -inf. `fired`: x > threshold, if at hand."""
    fired = x > threshold if fired is None else fired
    if threshold < 0:
        x = x + 0.0  # -0.0 -> +0.0: equal values must get equal keys
    key, rows = sort_keys(x, fired).topk(min(k, x.shape[0]), dim=0)
    values = x.gather(0, rows).float().masked_fill_(key == torch.iinfo(key.dtype).min, float("-inf"))
    return values, rows


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

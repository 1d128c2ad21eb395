"""What a checkpoint is tied to besides the run's settings: the model's weights.

A model given by name or folder is identified by its weight files (names, sizes, mtimes and the bytes
at both ends, which hold a safetensors file's header); in the Hugging Face cache a file is a blob named
by its content hash, which then stands for the file. A model object passed in is identified by two
sums per parameter, computed where the parameter lives. Either way, new weights saved over old ones
change the fingerprint, so a checkpoint counted with the old weights is not resumed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
ENDS = 1 << 16  # bytes read at each end of a weight file


def _file_entry(path: Path) -> dict:
    real = path.resolve()
    st = real.stat()
    entry: dict = {"name": path.name, "size": st.st_size}
    if real.parent.name == "blobs":  # Hugging Face cache: the blob's name is its content hash
        entry["blob"] = real.name
        return entry
    h = hashlib.sha256()
    with real.open("rb") as fh:
        h.update(fh.read(ENDS))
        if st.st_size > 2 * ENDS:
            fh.seek(-ENDS, 2)
        h.update(fh.read(ENDS))
    entry["ends_sha256"] = h.hexdigest()
    entry["mtime_ns"] = st.st_mtime_ns
    return entry


def of_folder(folder: Path) -> str:
    """A digest of the weight files (and their index) in a model folder."""
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".index.json")))  # fmt: skip
    return hashlib.sha256(json.dumps([_file_entry(p) for p in files], sort_keys=True).encode()).hexdigest()


@torch.inference_mode()
def of_module(model: torch.nn.Module) -> str:
    """A digest of a model object's parameters and buffers: per tensor its name, shape and two float64 sums
    (plain, and its Euclidean norm), reduced on its own device; weights offloaded to the meta device count by shape."""
    h = hashlib.sha256()
    sums = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        if t.device.type != "meta" and t.numel():
            x = t.detach()
            norm = torch.linalg.vector_norm(x, dtype=torch.float64) if x.is_floating_point() else x.new_zeros(())
            sums.append(torch.stack([x.sum(dtype=torch.float64), norm.double()]).cpu())
    if sums:
        h.update(torch.cat(sums).numpy().tobytes())
    return h.hexdigest()


def of_model(model: Any, folder: Path | None) -> str | None:
    """The weights' fingerprint: of a model object as it is in memory (it may have been changed since it was
    loaded), else of the folder its weights are read from."""
    if isinstance(model, torch.nn.Module):
        return of_module(model)
    return of_folder(folder) if folder is not None and folder.is_dir() else None

"""Formatting shared by the report's pages and figures: numbers, token strings, run names, canvases."""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..analysis import METADATA, Analysis

KIND_COLORS = {"oscillatory": "#7b3294", "two_sided": "#2c7bb6", "one_sided": "#e66101", "other": "#8c8c8c"}
KIND_LABELS = {"oscillatory": "oscillatory", "two_sided": "two-sided", "one_sided": "one-sided", "other": "other"}
DPI = 110


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return path


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any) -> float | None:
    """A float, or None for null / NaN."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _pct(x: Any, digits: int = 1) -> str:
    x = _num(x)
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _int(x: Any) -> str:
    return "n/a" if x is None else f"{int(x):,}"


def _show_token(s: str | None, token: int | None = None) -> str:
    """A token string made visible: spaces as ␣, newlines as ↵, other control characters escaped."""
    if s is None:
        return f"#{token}" if token is not None else "?"
    out = []
    for ch in s:
        if ch == " ":
            out.append("␣")
        elif ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append("⇥")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(repr(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out) or "∅"


def short_name(model_id: Any) -> str:
    """`facebook/opt-125m` -> `opt-125m`; a path -> its last component."""
    s = str(model_id or "run").rstrip("/")
    return Path(s).name or s


def display_id(model_id: Any) -> str:
    """A hub id as is (`facebook/opt-125m`); a local path by its last component."""
    s = str(model_id or "unknown model")
    looks_like_path = s.startswith(("/", ".", "~")) or s.count("/") > 1 or "\\" in s
    return short_name(s) if looks_like_path else s


def run_date(meta: dict, folder: str | Path | None = None) -> str | None:
    """The run's date from its metadata, else the time its metadata.json was written."""
    for key in ("date", "finished_at", "created", "timestamp"):
        if meta.get(key):
            return str(meta[key])
    for f in (folder, meta.get("out")):
        if f and (Path(f) / METADATA).exists():
            t = (Path(f) / METADATA).stat().st_mtime
            return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return None


def _layer_values(layers: pl.DataFrame, column: str) -> np.ndarray:
    """A layers-table column as float64 with NaN for nulls."""
    if column not in layers.columns:
        return np.full(layers.height, np.nan)
    return layers[column].cast(pl.Float64).fill_null(float("nan")).to_numpy()


def _n_neurons_per_layer(a: Analysis) -> int:
    if a.layers.height:
        return int(a.layers["n_neurons"].max())  # type: ignore[arg-type]
    return int(a.metadata.get("n_neurons") or 0)


def _cover_range(lo: int, hi: int) -> str:
    """cover_k as certified: exact, or the range a lossy summary proves."""
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def run_time(meta: dict) -> str | None:
    """How long the run took, and whether the host's counting set its speed (None: not recorded)."""
    fwd, count, wall = (meta.get(k) for k in ("forward_seconds", "counting_seconds", "wall_seconds"))
    if fwd is None or count is None:
        return None
    text = (f"{wall:,.1f} s in all; " if wall is not None else "") + \
        f"forward passes {fwd:,.1f} s, the host's counting busy {count:,.1f} s of them"  # fmt: skip
    if fwd > 0 and count >= 0.9 * fwd:  # the device waited for the host
        text += " (the counting set the speed: detail_tokens gives every statistic to fewer tokens)"
    return text


def run_title(meta: dict, folder: str | Path | None = None) -> str:
    date = run_date(meta, folder)
    tokens = meta.get("n_tokens")
    parts = [display_id(meta.get("model_id"))]
    if tokens:
        parts.append(f"{int(tokens):,} tokens")
    if date:
        parts.append(date[:10])
    return " · ".join(parts)

"""Self-contained HTML: the page, notes, figures as data URIs, key-value and data-frame tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import polars as pl

from .format import _data_uri, _esc, _pct, _show_token

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:0 auto;padding:1em 1.5em;
color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:.2em 0 .5em}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em;
margin:.6em 0}.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1em}
.card{border:1px solid #ccc;border-radius:6px;padding:.7em 1em}.card img{max-width:100%}
.badge{display:inline-block;font-size:.75em;padding:.05em .5em;border-radius:1em;background:#eee;margin-left:.4em}
code.tok{background:#f0f0f0;padding:0 .25em;border-radius:3px;white-space:pre}.tk{white-space:nowrap;margin-right:.5em}
td.name{white-space:nowrap}
.scroll{overflow-x:auto}details{margin:.6em 0}
"""


def _page(title: str, subtitle: str, body: list[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f'<h1>{_esc(title)}</h1>\n<p class="sub">{_esc(subtitle)}</p>\n' + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _figure_html(path: Path | None, alt: str, caption: str, note: str | None) -> str:
    parts = []
    if path is not None:
        parts.append(f'<figure><img src="{_data_uri(path)}" alt="{_esc(alt)}">'
                     f"<figcaption>{_esc(caption)}</figcaption></figure>")  # fmt: skip
    if note:
        parts.append(_note(note))
    return "\n".join(parts)


def _kv_table(rows: Iterable[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _format_cell(v: Any) -> tuple[str, bool]:
    if v is None:
        return "", False
    if isinstance(v, bool):
        return ("yes" if v else "no"), False
    if isinstance(v, int):
        return f"{v:,}", True
    if isinstance(v, float):
        if math.isnan(v):
            return "", True
        return (f"{v:.4f}" if abs(v) < 1 else f"{v:,.2f}"), True
    return str(v), False


def _df_table(df: pl.DataFrame, headers: Sequence[str] | None = None, percent: Iterable[str] = ()) -> str:
    heads = headers or df.columns
    pct_at = {df.columns.index(c) for c in percent}
    out = ['<div class="scroll"><table><tr>' + "".join(f"<th>{_esc(h)}</th>" for h in heads) + "</tr>"]
    for row in df.iter_rows():
        cells = []
        for i, v in enumerate(row):
            s, numeric = (_pct(v) if v is not None else "", True) if i in pct_at else _format_cell(v)
            if i == 0:
                cells.append(f'<td class="name">{_esc(s)}</td>')
            else:
                cells.append(f'<td class="n">{_esc(s)}</td>' if numeric else f"<td>{_esc(s)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    return "".join(out)


def _tok_chip(t: int, s: str | None, extra: str = "") -> str:
    chip = f'<code class="tok" title="id {t}">{_esc(_show_token(s, t))}</code>'
    return f'<span class="tk">{chip}{_esc(extra)}</span>'

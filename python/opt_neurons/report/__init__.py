"""Figures and HTML reports: one run (`write_report`) and several runs on relative depth (`compare`).

The figures follow the paper's (Voita, Ferrando & Nalmpantis 2023): dead neurons and mean frequency
of live neurons per layer (Figure 1), n-gram coverage (Figure 2), token detectors and the tokens they
cover (Figures 3-4), suppression of trigger tokens (Figure 6), positional neurons (Figures 7-9). Pages
are self-contained: figures are embedded as base64 PNG data URIs, no scripts, no external assets; the
same PNGs are also written to `figures/`. Drawing uses matplotlib's Agg canvas directly (no pyplot, so
the caller's backend and open figures are left alone).

Modules: `format` (shared formatting), `headline` (headline numbers), `figures` (one run's figures),
`cards` (neuron cards), `page` (HTML building blocks), `write` (`write_report`), `compare`.
"""

from .cards import TOP_K, default_cards, neuron_card
from .compare import COMPARE_FILES, compare
from .format import _cover_range, _esc, _show_token, display_id, run_date, run_time, run_title, short_name
from .headline import SUMMARY_SCHEMA, _headline_rows, headline
from .write import FIGURE_FILES, write_report

__all__ = [
    "COMPARE_FILES", "FIGURE_FILES", "SUMMARY_SCHEMA", "TOP_K", "_cover_range", "_esc", "_headline_rows",
    "_show_token", "compare", "default_cards", "display_id", "headline", "neuron_card", "run_date", "run_time",
    "run_title", "short_name", "write_report",
]  # fmt: skip

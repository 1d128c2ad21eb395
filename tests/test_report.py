"""Reports: figures and HTML of one run, comparison of several, neuron cards, and the page in a real
headless browser (Debian chromium over the DevTools protocol on a pipe: no extra Python dependency).

The runs are synthetic: activation bitmasks with planted dead neurons, token and trigram detectors,
positional neurons of every kind and ordinary neurons, fed to `NeuronStats` and finalized with a tiny
random OPT of the same shape (so the suppression columns and the cards' token scores are real)."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import opt_neurons
from opt_neurons import Analysis, NeuronStats, OptNeuronsError, report
from opt_neurons.tables import build_tables

from conftest import gpt2_tokenizer, save_tiny_opt
from reference import layer_coverage

PNG = b"\x89PNG\r\n\x1a\n"
BOS = 50256
T = 128
N_SEQ = 48
N_NEURONS = 128
TRIGRAM = (1500, 1501, 1502)


@dataclass
class Synthetic:
    dir: Path
    model_dir: Path
    analysis: Analysis
    detectors: dict  # (layer, neuron) -> set of token ids
    trigram: tuple  # (layer, neuron) of the trigram detector
    positional: dict  # (layer, neuron) -> expected kind
    dead: set


def _rule_kind(pos: np.ndarray, rng: np.random.Generator, kind: str, shift: int) -> np.ndarray:
    """Activation of a planted positional neuron at each row's position."""
    if kind == "oscillatory":  # on for 16 positions, off for 16: 4 active intervals in 128
        return ((pos + shift) // 16) % 2 == 0
    if kind == "two_sided":  # always on at the start, never later
        return pos < 40 + shift
    if kind == "one_sided":  # always on at the start, 30% later
        return (pos < 40) | (rng.random(pos.shape) < 0.3)
    return rng.random(pos.shape) < np.where((pos >= 50) & (pos < 80), 0.85, 0.2)  # other


def build_synthetic(root: Path, n_layers: int, seed: int) -> Synthetic:
    rng = np.random.default_rng(seed)
    ordinary = np.arange(1000, 1300)
    weights = 1.0 / (np.arange(len(ordinary)) + 5.0)
    tokens = rng.choice(ordinary, size=(N_SEQ, T), p=weights / weights.sum())
    for row in tokens:  # the trigram twice per sequence, and its last token twice alone
        for start in rng.choice(np.arange(2, T - 3, 5), size=4, replace=False)[:2]:
            row[start : start + 3] = TRIGRAM
        for at in rng.choice(np.arange(4, T, 5), size=2, replace=False):
            row[at] = TRIGRAM[2]
    tokens[:, 0] = BOS
    flat = tokens.reshape(-1)
    pos = np.tile(np.arange(T), N_SEQ)
    prev1 = np.concatenate([[BOS], flat[:-1]])
    prev2 = np.concatenate([[BOS, BOS], flat[:-2]])
    trigram_at = (flat == TRIGRAM[2]) & (prev1 == TRIGRAM[1]) & (prev2 == TRIGRAM[0]) & (pos >= 2)

    stats = NeuronStats(n_layers, N_NEURONS, 50257, T, bos_token_id=BOS, n_sources=2)
    source = (np.arange(flat.size) // T >= N_SEQ // 4).astype(np.int64)  # the first quarter "prose", then "code"
    detectors, positional, dead = {}, {}, set()
    trigram = None
    for layer in range(n_layers):
        acts = np.zeros((flat.size, N_NEURONS), bool)
        n_dead = int(N_NEURONS * max(0.0, 0.35 - 0.12 * layer) * (1 + 0.3 * seed))
        nid = n_dead
        dead.update((layer, i) for i in range(n_dead))
        for _ in range(3 + 2 * layer):  # token detectors: 1-3 moderately frequent tokens each
            toks = set(rng.choice(ordinary[5:60], size=int(rng.integers(1, 4)), replace=False).tolist())
            acts[:, nid] = np.isin(flat, list(toks)) & (pos > 0)
            detectors[(layer, nid)] = toks
            nid += 1
        if layer == 1:
            acts[:, nid] = trigram_at
            trigram = (layer, nid)
            nid += 1
        kinds = ["oscillatory"] * 4 + ["two_sided", "one_sided", "other"] if layer == 0 else ["two_sided"] * layer
        for j, kind in enumerate(kinds):
            acts[:, nid] = _rule_kind(pos, rng, kind, 4 * j)
            positional[(layer, nid)] = kind
            nid += 1
        rate = min(0.3, 0.02 * 3**layer)
        for i in range(nid, N_NEURONS):  # ordinary neurons, rates spread around the layer's
            acts[:, i] = rng.random(flat.size) < rate * rng.lognormal(0, 0.5)
        acts[source == 0, nid : nid + 4 + layer] = False  # a few never fire on "prose"
        bits = np.packbits(acts, axis=1, bitorder="little").view("<u8")
        stats.update(layer, bits, flat, pos)
        stats.add_source_counts({layer: np.stack([acts[source == s].sum(0) for s in (0, 1)])}, np.bincount(source))

    model_dir = save_tiny_opt(root / f"opt-synth-{n_layers}l", ffn_dim=N_NEURONS, layers=n_layers,
                              max_positions=T, seed=seed)  # fmt: skip
    from transformers import OPTForCausalLM

    model = OPTForCausalLM.from_pretrained(model_dir).eval()
    tables = build_tables(stats, tokenizer=gpt2_tokenizer(), model=model, source_names=["prose", "code"])
    metadata = {
        "model_id": str(model_dir), "revision": None, "dtype": "float32", "n_layers": n_layers,
        "n_neurons": N_NEURONS, "vocab_size": 50257, "bos_token_id": BOS, "n_tokens": int(flat.size),
        "n_sequences": N_SEQ, "T": T, "data_sources": [{"name": "synthetic bitmasks", "sha256": "0" * 64}],
        "thresholds": opt_neurons.Thresholds().to_dict(), "package_version": opt_neurons.__version__,
        "date": f"2024-05-0{seed + 1}T12:00:00Z", "position_totals": stats.position_totals().tolist(),
        "source_tokens": dict(zip(["prose", "code"], np.bincount(source).tolist())),
    }  # fmt: skip
    a = Analysis(tables.neurons, tables.layers, tables.tokens, tables.positions, metadata)
    out = root / f"run-{n_layers}l"
    a.save(out)
    return Synthetic(out, model_dir, opt_neurons.load(out), detectors, trigram, positional, dead)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Synthetic]:
    root = tmp_path_factory.mktemp("report-runs")
    return [build_synthetic(root, 3, 0), build_synthetic(root, 4, 1)]


@pytest.fixture(scope="module")
def empty_run(tmp_path_factory) -> Analysis:
    """Every neuron dead: no detectors, no positional neurons, null suppression columns."""
    stats = NeuronStats(2, 64, 50257, 16, bos_token_id=BOS)
    tok = np.random.default_rng(0).integers(1000, 1100, size=64)
    for layer in range(2):
        stats.update(layer, np.zeros((64, 1), np.uint64), tok, np.tile(np.arange(16), 4))
    t = build_tables(stats)
    meta = {"model_id": "nowhere/opt-empty", "n_layers": 2, "n_neurons": 64, "n_tokens": 64, "T": 16}
    return Analysis(t.neurons, t.layers, t.tokens, t.positions, meta)


def png_ok(data: bytes) -> tuple[int, int]:
    """(width, height) of a valid PNG (signature and IHDR checked)."""
    assert data[:8] == PNG, "not a PNG"
    assert data[12:16] == b"IHDR"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert w > 50 and h > 50
    assert data[-8:] == b"IEND\xaeB`\x82", "PNG is truncated"
    return w, h


def data_uri_pngs(page: str) -> list[bytes]:
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    out = []
    for s in srcs:
        assert s.startswith("data:image/png;base64,"), s[:40]
        out.append(base64.b64decode(s.split(",", 1)[1], validate=True))
    return out


# ----------------------------------------------------------------------------------------------


def test_synthetic_runs_have_what_was_planted(runs):
    """The fixture itself: every planted feature is found, so the figures have content."""
    for r in runs:
        n = r.analysis.neurons
        got_det = {(l, i): set(t) for l, i, t in n.filter(pl.col("token_detector"))
                   .select("layer", "neuron", "detected_tokens").iter_rows()}  # fmt: skip
        for key, toks in r.detectors.items():
            assert got_det.get(key) == toks, key
        assert n.filter((pl.col("layer") == r.trigram[0]) & (pl.col("neuron") == r.trigram[1]))["trigram_detector"][0]
        kinds = {(l, i): k for l, i, k in n.filter(pl.col("positional"))
                 .select("layer", "neuron", "positional_kind").iter_rows()}  # fmt: skip
        for key, kind in r.positional.items():
            assert kinds.get(key) == kind, key
        assert {(l, i) for l, i in n.filter(pl.col("dead")).select("layer", "neuron").iter_rows()} == r.dead
        assert n.filter(pl.col("token_detector"))["suppresses_triggers"].null_count() == 0


def test_write_report(runs, tmp_path):
    r = runs[1]
    page = report.write_report(r.analysis, tmp_path / "rep")
    assert page == tmp_path / "rep" / "report.html"
    figs = tmp_path / "rep" / "figures"
    for name in report.FIGURE_FILES:
        png_ok((figs / name).read_bytes())
    cards = sorted(figs.glob("card_L*_N*.png"))
    assert cards, "positional cards have curve images"
    html = page.read_text()
    embedded = data_uri_pngs(html)
    on_disk = {p.read_bytes() for p in [*figs.iterdir()]}
    assert len(embedded) == len(report.FIGURE_FILES) + len(cards)
    assert set(embedded) == on_disk
    for b in embedded:
        png_ok(b)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    # titles carry the run's metadata; headline numbers match the tables
    assert "opt-synth-4l" in html and f"{r.analysis.metadata['n_tokens']:,} tokens" in html and "2024-05-02" in html
    n_det = int(r.analysis.neurons["token_detector"].sum())
    assert f"<th>Token detectors</th><td>{n_det}," in html
    # default cards: the biggest detectors (with their strings and token scores) and positional neurons
    assert html.count('<div class="card">') >= 5
    assert "Most suppressed tokens" in html and "Most promoted tokens" in html
    top = r.analysis.neurons.filter(pl.col("token_detector")).sort("n_active", descending=True).row(0, named=True)
    assert f'id="card-L{top["layer"]}-N{top["neuron"]}"' in html
    for s in top["detected_strings"]:
        assert report._esc(report._show_token(s)) in html


def test_dead_neurons_per_source(runs, empty_run, tmp_path):
    """layers.dead_fraction_by_source counts, per source, the neurons that never fire on its tokens; the report
    draws it (the figure of issue 19) and lists it per layer; a run without sources gets a note instead."""
    a = runs[1].analysis
    n = a.neurons.unnest("n_active_by_source")
    assert (n["prose"] + n["code"] == n["n_active"]).all()
    assert ((n["prose"] == 0) & ~n["dead"]).sum() >= 4 * a.layers.height  # the planted "code"-only neurons
    dead = a.layers["dead_fraction_by_source"].struct.unnest()
    for layer in range(a.layers.height):
        of = n.filter(pl.col("layer") == layer)
        for name in ("prose", "code"):
            assert dead[name][layer] == (of[name] == 0).mean()
    assert (dead["prose"] > a.layers["dead_fraction"]).all() and (dead["code"] == a.layers["dead_fraction"]).all()
    freq = a.neurons["frequency_by_source"].struct.field("prose")
    assert np.allclose(freq.to_numpy(), n["prose"].to_numpy() / a.metadata["source_tokens"]["prose"])
    html = report.write_report(a, tmp_path / "rep").read_text()
    assert "Dead neurons per source" in html and "<th>dead_fraction: prose</th>" in html
    png_ok((tmp_path / "rep" / "figures" / "fig_dead_by_source.png").read_bytes())
    html = report.write_report(empty_run, tmp_path / "empty").read_text()
    assert "The data names fewer than two sources" in html


def test_report_rewrites_without_stale_figures(runs, empty_run, tmp_path):
    out = tmp_path / "rep"
    report.write_report(runs[0].analysis, out)
    assert (out / "figures" / "fig8_positional_curves.png").exists()
    report.write_report(empty_run, out)
    left = sorted(p.name for p in (out / "figures").iterdir())
    assert left == ["fig1_dead_frequency.png"], left


def test_empty_cases_get_notes(empty_run, tiny_opt, tiny_tokens, tmp_path):
    html = report.write_report(empty_run, tmp_path / "empty").read_text()
    for note in ("Every neuron is dead", "No token or trigram detectors", "No positional neurons",
                 "No token detectors in this run, so no suppression",
                 "No token detectors or positional neurons"):  # fmt: skip
        assert note in html, note
    # a real tiny run: no detectors, null suppression columns, everything positional
    a = opt_neurons.analyze(tiny_opt, tiny_tokens, progress=False)
    assert a.layers["suppressing_fraction"].null_count() == a.layers.height
    page = report.write_report(a, tmp_path / "tiny")
    assert "No token or trigram detectors" in page.read_text()
    # detectors whose suppression was never computed (finalized without the model)
    r_neurons = a.neurons.with_columns(pl.lit(None, dtype=pl.Boolean).alias("suppresses_triggers"))
    b = Analysis(r_neurons, a.layers.with_columns(n_token_detectors=pl.lit(2, pl.UInt32)), a.tokens, a.positions,
                 a.metadata)  # fmt: skip
    assert "suppression columns are empty" in report.write_report(b, tmp_path / "nosup").read_text()


def test_neuron_card(runs):
    from transformers import OPTForCausalLM

    from opt_neurons.suppression import value_scores

    r = runs[0]
    a = r.analysis
    model = OPTForCausalLM.from_pretrained(r.model_dir).eval()
    tok = gpt2_tokenizer()
    (layer, neuron), toks = next(iter(r.detectors.items()))
    card = report.neuron_card(a, layer, neuron, model, tok)
    assert card["token_detector"] and set(card["detected_tokens"]) == toks
    assert card["detected_strings"] == [tok.decode([t]) for t in card["detected_tokens"]]
    row = a.neurons.filter((pl.col("layer") == layer) & (pl.col("neuron") == neuron)).row(0, named=True)
    assert card["frequency"] == row["frequency"] and card["n_active"] == row["n_active"]
    assert card["suppression_score"] == pytest.approx(row["suppression_score"])
    scores = value_scores(model, layer, [neuron])[:, 0].numpy()
    sup = [d["score"] for d in card["top_suppressed"]]
    pro = [d["score"] for d in card["top_promoted"]]
    assert len(sup) == report.TOP_K and sup == sorted(sup) and sup[0] == pytest.approx(scores.min())
    assert pro == sorted(pro, reverse=True) and pro[0] == pytest.approx(scores.max())
    assert card["top_suppressed"][0]["string"] == tok.decode([card["top_suppressed"][0]["token"]])
    assert np.mean(card["detected_scores"]) == pytest.approx(row["suppression_score"], rel=1e-5)
    assert card["position_curve"] is None
    json.dumps(card)  # JSON-friendly

    (layer, neuron), kind = next((k, v) for k, v in r.positional.items() if v == "oscillatory")
    card = report.neuron_card(a, layer, neuron)
    assert card["positional_kind"] == "oscillatory" and len(card["active_intervals"]) >= 3
    fr = a.positions.filter((pl.col("layer") == layer) & (pl.col("neuron") == neuron))["fr"][0].to_list()
    assert card["position_curve"] == fr and card["top_suppressed"] is None

    card = report.neuron_card(a, *r.trigram)
    assert card["trigram_detector"] and card["detected_trigrams"] == [list(TRIGRAM)]
    assert card["detected_trigram_strings"] == [[None, None, None]]  # not in the tokens table, no tokenizer
    assert report.neuron_card(a, *r.trigram, tokenizer=tok)["detected_trigram_strings"] == [
        [tok.decode([t]) for t in TRIGRAM]]  # fmt: skip
    with pytest.raises(OptNeuronsError, match="no neuron"):
        report.neuron_card(a, 0, N_NEURONS)


def test_cards_and_headline_say_what_is_certified(runs):
    a = runs[0].analysis
    for row in a.neurons.filter(~pl.col("dead")).head(20).iter_rows(named=True):
        card = report.neuron_card(a, row["layer"], row["neuron"])
        for k in (1, 2, 3):
            assert (card[f"cover_{k}"], card[f"cover_{k}_max"]) == (row[f"cover_{k}"], row[f"cover_{k}_max"])
    assert report._cover_range(7, 7) == "7" and report._cover_range(7, 1200) == "7-1,200"
    h = report.headline(a)
    meta = dict(a.metadata, detail_tokens=h["tokens"] // 2)
    rows = dict(report._headline_rows(h, meta))
    assert rows["Token and position statistics over"].startswith(f"the first {h['tokens'] // 2:,} tokens")
    assert "Token and position statistics over" not in dict(report._headline_rows(h, dict(a.metadata)))
    assert "Run time" not in rows  # these synthetic runs recorded no timings
    timed = dict(a.metadata, forward_seconds=12.0, counting_seconds=3.0, wall_seconds=15.5)
    assert dict(report._headline_rows(h, timed))["Run time"] == report.run_time(timed)
    for m in (dict(a.metadata), meta, timed):  # the paper's figure follows the dead neurons, whatever rows precede
        keys = [k for k, _ in report._headline_rows(dict(h, model="OPT-125m"), m)]
        assert keys[keys.index("Dead neurons") + 1] == "Paper: peak dead fraction of this model"


def test_run_time_says_when_the_counting_set_the_speed():
    assert report.run_time({"forward_seconds": 10.0, "counting_seconds": 9.5}) == (
        "forward passes 10.0 s, the host's counting busy 9.5 s of them (the counting set the speed: "
        "detail_tokens gives every statistic to fewer tokens)")  # fmt: skip
    assert report.run_time({"forward_seconds": 100.0, "counting_seconds": 8.0, "wall_seconds": 130.0}) == (
        "130.0 s in all; forward passes 100.0 s, the host's counting busy 8.0 s of them"
    )
    assert report.run_time({}) is None  # saved before these were recorded


def test_report_model_options(runs, tmp_path):
    a = runs[0].analysis
    html = report.write_report(a, tmp_path / "none", model=None).read_text()
    assert "need the model&#x27;s weights" in html and "Most suppressed tokens" not in html
    far = Analysis(a.neurons, a.layers, a.tokens, a.positions, {**a.metadata, "model_id": "nowhere/opt-x"})
    html = report.write_report(far, tmp_path / "far").read_text()
    assert "are not on this machine" in html
    wrong = save_tiny_opt(tmp_path / "wrong", ffn_dim=64, layers=3)
    html = report.write_report(a, tmp_path / "wrong-rep", model=str(wrong), cards=[(0, 0)]).read_text()
    assert "64 neurons" in html and html.count('<div class="card">') == 1


def summary_expected(a: Analysis) -> dict:
    n = a.neurons
    det = n.filter(pl.col("token_detector"))
    per_layer = n.group_by("layer").agg(pl.col("dead").mean()).sort("layer")
    covered = set()
    for t in det["detected_tokens"].to_list():
        covered |= set(t)
    return {
        "layers": n["layer"].n_unique(),
        "neurons": n.height,
        "tokens": a.metadata["n_tokens"],
        "dead": int(n["dead"].sum()),
        "dead_max_layer_fraction": per_layer["dead"].max(),
        "dead_max_layer": int(per_layer.sort("dead", descending=True)["layer"][0]),
        "token_detectors": det.height,
        "tokens_covered": len(covered),
        "trigram_detectors": int(n["trigram_detector"].sum()),
        "positional": int(n["positional"].sum()),
        "oscillatory": int((n["positional_kind"] == "oscillatory").sum()),
        "suppressing_fraction": det["suppresses_triggers"].cast(pl.Float64).mean(),
        "suppressing_fraction_baseline": det["suppression_baseline"].mean(),
    }


def test_compare(runs, empty_run, tmp_path):
    page = report.compare([runs[1].dir, runs[0].dir], tmp_path / "cmp")
    assert page == tmp_path / "cmp" / "compare.html"
    for name in report.COMPARE_FILES:
        png_ok((tmp_path / "cmp" / "figures" / name).read_bytes())
    s = pl.read_parquet(tmp_path / "cmp" / "summary.parquet")
    assert s["model"].to_list() == ["opt-synth-3l", "opt-synth-4l"]  # smallest first
    for row, r in zip(s.iter_rows(named=True), runs):
        exp = summary_expected(r.analysis)
        for k, v in exp.items():
            assert row[k] == pytest.approx(v), (row["model"], k)
        assert row["tokens_covered"] == r.analysis.tokens.height
        assert row["neurons_per_layer"] == N_NEURONS and row["dir"] == str(r.dir)
    md = (tmp_path / "cmp" / "summary.md").read_text()
    lines = md.strip().splitlines()
    assert len(lines) == 2 + len(runs) and lines[0].startswith("| model |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert f"| {s['token_detectors'][0]:,} |" in lines[2]
    html = page.read_text()
    assert len(data_uri_pngs(html)) == len(report.COMPARE_FILES)
    # an all-dead run alongside (null mean frequencies, no detectors) still compares
    empty_run.save(tmp_path / "empty")
    report.compare([tmp_path / "empty", runs[0].dir], tmp_path / "cmp2")
    with pytest.raises(OptNeuronsError, match="not a saved analysis"):
        report.compare([tmp_path], tmp_path / "cmp3")


def test_cli_report_and_compare(runs, tmp_path):
    r = subprocess.run([sys.executable, "-m", "opt_neurons.cli", "report", str(runs[0].dir), "--out",
                        str(tmp_path / "r")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "r" / "report.html")
    r = subprocess.run([sys.executable, "-m", "opt_neurons.cli", "compare", str(runs[0].dir), str(runs[1].dir),
                        "--out", str(tmp_path / "c")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "c" / "compare.html")
    assert (tmp_path / "c" / "summary.md").exists()


# ----------------------------------------------------------------------------------------------
# headless browser


def find_chromium() -> str | None:
    for env in ("CHROMIUM", "CHROME_BIN"):
        if os.environ.get(env) and shutil.which(os.environ[env]):
            return shutil.which(os.environ[env])
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class Browser:
    """Headless chromium driven over the DevTools protocol on a pipe (fds 3/4, NUL-separated JSON)."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--remote-debugging-pipe",
                f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"]  # fmt: skip
        self.log = open(profile.parent / "chromium.log", "wb")
        # bash puts the pipe ends on the fds 3 and 4 that --remote-debugging-pipe reads and writes
        shell = f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}'
        self.proc = subprocess.Popen(["bash", "-c", shell, "chromium", *args], pass_fds=(to_chrome_r, from_chrome_w),
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)  # fmt: skip
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _recv(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("no answer from chromium; its log: " + self._log_tail())
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe; its log: " + self._log_tail())
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def _log_tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-2000:]

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self._id += 1
        msg: dict = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._recv(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, session: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for i, e in enumerate(self.events):
            if e.get("method") == method and e.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            m = self._recv(deadline)
            if m.get("method") == method and m.get("sessionId") == session:
                return m
            self.events.append(m)

    def open(self, url: str) -> dict:
        """Load `url` in a fresh tab; return its DOM facts, console errors and a screenshot (PNG bytes)."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=session)
        self.call("Page.navigate", {"url": url}, session)
        self.wait_event("Page.loadEventFired", session)
        js = ("JSON.stringify({title: document.title, html: document.documentElement.outerHTML,"
              " images: Array.from(document.images).map(i => ({data: i.src.startsWith('data:image/png;base64,'),"
              " complete: i.complete, w: i.naturalWidth, h: i.naturalHeight})),"
              " h2: Array.from(document.querySelectorAll('h2')).map(e => e.textContent)})")  # fmt: skip
        dom = json.loads(self.call("Runtime.evaluate", {"expression": js, "returnByValue": True}, session)
                         ["result"]["value"])  # fmt: skip
        shot = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"}, session)["data"])
        self.call("Target.closeTarget", {"targetId": target})
        errors = []
        for e in self.events:
            if e.get("sessionId") != session:
                continue
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                errors.append(f"{d.get('text')}: {d.get('exception', {}).get('description', '')}"[:300])
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append("console.error: " + " ".join(str(x.get("value", x)) for x in p.get("args", []))[:300])
            elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                errors.append(f"{p['entry'].get('text', '')} {p['entry'].get('url', '')}"[:300])
        self.events = [e for e in self.events if e.get("sessionId") != session]
        return {**dom, "errors": errors, "screenshot": shot}

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)
        self.log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium binary found (Debian: apt-get install chromium; .ci/run installs it)")
    b = Browser(binary, tmp_path_factory.mktemp("chromium") / "profile")
    yield b
    b.close()


def test_browser_harness_catches_errors(browser, tmp_path):
    """Control: the checks below are not vacuous; a broken page is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="missing.png"><script>console.error("planted error");'
                   'throw new Error("planted exception");</script></body></html>')  # fmt: skip
    res = browser.open(bad.as_uri())
    text = "\n".join(res["errors"])
    assert "planted error" in text and "planted exception" in text and "missing.png" in text, text
    assert res["images"] == [{"data": False, "complete": True, "w": 0, "h": 0}]


def test_report_in_browser(browser, runs, tmp_path):
    page = report.write_report(runs[1].analysis, tmp_path / "rep")
    res = browser.open(page.as_uri())
    assert res["errors"] == []
    assert res["title"].startswith("opt_neurons report: ") and "opt-synth-4l" in res["title"]
    n_figs = len(list((tmp_path / "rep" / "figures").iterdir()))
    assert len(res["images"]) == n_figs >= len(report.FIGURE_FILES)
    for img in res["images"]:  # every figure is a data URI the browser decoded
        assert img["data"] and img["complete"] and img["w"] > 50 and img["h"] > 50, img
    for b in data_uri_pngs(res["html"]):
        png_ok(b)
    assert "Headline numbers" in res["h2"] and "Neuron cards" in res["h2"]
    png_ok(res["screenshot"])
    (tmp_path / "screenshot.png").write_bytes(res["screenshot"])

    cmp = report.compare([r.dir for r in runs], tmp_path / "cmp")
    res = browser.open(cmp.as_uri())
    assert res["errors"] == []
    assert len(res["images"]) == len(report.COMPARE_FILES)
    assert all(i["data"] and i["complete"] and i["w"] > 50 for i in res["images"])


def test_neuron_pages_in_browser(browser, runs, tiny_opt, tiny_tokens, tmp_path):
    """Issue 18: a page per neuron with its example contexts, and an index that filters them (its script
    runs: the count it writes is there), with no console errors; the report's cards link to the pages."""
    a = opt_neurons.analyze(tiny_opt, tiny_tokens, batch_size=2, progress=False, examples=4)
    page = report.write_report(a, tmp_path / "rep", model=None)
    index = tmp_path / "rep" / "neurons" / "index.html"
    res = browser.open(index.as_uri())
    assert res["errors"] == []
    pages = sorted((tmp_path / "rep" / "neurons").glob("L*_N*.html"))
    from opt_neurons.report.neuron_pages import select_neurons

    assert len(pages) == select_neurons(a).height > 0
    assert f"{len(pages)} of {len(pages)} neurons" in res["html"]
    res = browser.open((tmp_path / "rep" / "neurons" / "L1_N3.html").as_uri())
    assert res["errors"] == [] and "Top examples by activation" in res["h2"] and "Random examples" in res["h2"]
    n_examples = a.example_table.filter((pl.col("layer") == 1) & (pl.col("neuron") == 3)).height
    assert res["html"].count('class="t fire"') == n_examples == 8
    assert 'href="neurons/index.html"' in page.read_text()
    # With the model at hand every context token is shaded by its own activation (Neuroscope style); the
    # firing token's, from that second forward pass, equals the value the run kept.
    report.write_report(a, tmp_path / "rep2", model=tiny_opt)
    html = (tmp_path / "rep2" / "neurons" / "L1_N3.html").read_text()
    assert html.count("background:rgba") > n_examples
    top = a.example_table.filter((pl.col("layer") == 1) & (pl.col("neuron") == 3) & (pl.col("kind") == "top"))
    shown = [float(v) for v in re.findall(r'title="position \d+, token \d+, ([-0-9.]+)"', html)]
    assert shown[: top.height] == pytest.approx([round(v, 3) for v in top["value"].to_list()], abs=1.5e-3)
    assert browser.open((tmp_path / "rep2" / "neurons" / "L1_N3.html").as_uri())["errors"] == []
    # Synthetic runs (no examples kept): every detector and positional neuron still gets a page, with a note.
    syn = runs[1]
    report.write_report(syn.analysis, tmp_path / "syn", model=None)
    names = {p.name for p in (tmp_path / "syn" / "neurons").glob("L*_N*.html")}
    assert {f"L{l}_N{n}.html" for l, n in [*syn.detectors, *syn.positional, syn.trigram]} <= names
    res = browser.open((tmp_path / "syn" / "neurons" / "index.html").as_uri())
    assert res["errors"] == [] and "kept no examples" in res["html"]
    assert 'href="neurons/L' in (tmp_path / "syn" / "report.html").read_text()  # cards link to their pages


# ----------------------------------------------------------------------------------------------
# the paper's remaining figures (issue 19)


def test_coverage_figure_shows_the_first_half(runs, tmp_path):
    """Figures 2, 12, 13: by default the live neurons of the first half of the layers; all layers folded below."""
    from opt_neurons.report import figures

    a = runs[1].analysis  # 4 layers: the first half is layers 0 and 1
    assert figures.first_half(a) == [0, 1] and figures.first_half(runs[0].analysis) == [0]
    for layers, fig in ((
        [0, 1], figures.fig_coverage(a, "t")[0]), ([0, 1, 2, 3], figures.fig_coverage_all_layers(a, "t")[0]),
    ):  # fmt: skip
        alive = a.neurons.filter(~pl.col("dead") & pl.col("layer").is_in(layers))
        ax = fig.axes[0]
        assert f"coverage of {alive.height:,} live neurons" in ax.get_title()
        for k, bars in zip((1, 2, 3), ax.containers):  # each k's bars: % of those neurons in each bin
            heights = np.array([b.get_height() for b in bars])
            want = figures._bin_counts(alive[f"cover_{k}"].cast(pl.Int64).to_numpy())
            assert heights.sum() == pytest.approx(100.0)
            assert sorted(heights[heights > 0]) == pytest.approx(sorted(100 * want[want > 0] / alive.height))
    html = report.write_report(a, tmp_path / "rep", max_neuron_pages=0).read_text()
    head = html.index("n-gram coverage, first half of the network")
    fold = html.index("<details><summary>All layers (click to show)</summary><figure><img")
    assert head < fold < html.index("Token detectors and the tokens they cover")
    assert (tmp_path / "rep" / "figures" / "fig2_coverage_all_layers.png").exists()


def test_trigram_coverage_per_layer_and_figure(runs, tmp_path):
    """Layers table: trigrams covered by a layer's trigram detectors, new against the previous and every
    earlier layer (Figures 14-15), from the neurons table's detected trigrams."""
    from opt_neurons.report import figures

    for r in runs:
        n, L = r.analysis.neurons, r.analysis.layers
        per_layer = [set() for _ in range(L.height)]
        for l, grams in n.filter(pl.col("trigram_detector")).select("layer", "detected_trigrams").iter_rows():
            per_layer[l] |= {tuple(g) for g in grams}
        assert tuple(TRIGRAM) in per_layer[r.trigram[0]]
        assert tuple(L[c].to_list() for c in figures.TRIGRAM_COLUMNS) == layer_coverage(per_layer)
    fig, note = figures.fig_trigram_detectors(runs[1].analysis, "t")
    assert note is None
    ax1, ax2 = fig.axes
    L = runs[1].analysis.layers
    assert [b.get_height() for b in ax1.containers[0]] == L["n_trigram_detectors"].to_list()
    assert [[b.get_height() for b in c] for c in ax2.containers] == [L[c].to_list() for c in figures.TRIGRAM_COLUMNS]
    old = Analysis(r.analysis.neurons, L.drop(list(figures.TRIGRAM_COLUMNS)), r.analysis.tokens, r.analysis.positions,
                   r.analysis.metadata)  # fmt: skip
    assert figures.fig_trigram_detectors(old, "t") == (None, "This run's layers table predates the trigram "
                                                       "coverage columns: run `finalize` again.")  # fmt: skip


def test_value_tokens_figure(runs, tmp_path):
    """Figure 5: the top promoted / suppressed tokens of the strongest token detectors, scored here from the
    weights directly (fc2 column against the unembedding)."""
    from transformers import OPTForCausalLM

    from opt_neurons.report import figures

    r = runs[1]
    model = OPTForCausalLM.from_pretrained(r.model_dir).eval()
    tok = gpt2_tokenizer()
    fig, note = figures.fig_value_tokens(r.analysis, "t", model, tok, n=3, k=4)
    assert note is None
    det = r.analysis.neurons.filter(pl.col("token_detector")).sort("n_active", descending=True).head(3)
    w_u = model.get_output_embeddings().weight.detach().double()
    for ax, (layer, neuron) in zip(fig.axes, det.select("layer", "neuron").iter_rows()):
        assert ax.get_title().startswith(f"L{layer} N{neuron}: detects ")
        v = model.model.decoder.layers[layer].fc2.weight.detach().double()[:, neuron]
        s = (w_u @ v).numpy()
        order = np.argsort(s, kind="stable")
        ids = [*order[:4], *order[::-1][:4][::-1]]  # most suppressed first, most promoted last
        want = [("★ " if t in det.filter((pl.col("layer") == layer) & (pl.col("neuron") == neuron))
                 ["detected_tokens"][0].to_list() else "") + report._show_token(tok.decode([int(t)]), int(t))
                for t in ids]  # fmt: skip
        assert [t.get_text() for t in ax.get_yticklabels()] == want
        heights = [b.get_width() for b in ax.containers[0]]
        np.testing.assert_allclose(heights, s[ids], rtol=1e-5, atol=1e-7)
    assert figures.fig_value_tokens(r.analysis, "t", None) == (None, None)
    html = report.write_report(r.analysis, tmp_path / "rep", max_neuron_pages=0).read_text()
    assert "Top promoted and suppressed tokens of token detectors (Figure 5)" in html
    png_ok((tmp_path / "rep" / "figures" / "fig5_value_tokens.png").read_bytes())
    html = report.write_report(r.analysis, tmp_path / "nomodel", model=None, max_neuron_pages=0).read_text()
    assert not (tmp_path / "nomodel" / "figures" / "fig5_value_tokens.png").exists()
    assert "Top suppressed / promoted tokens need the model&#x27;s weights" in html


def test_report_marks_low_support_and_bits(runs, tmp_path):
    r = runs[1]
    n = r.analysis.neurons
    assert n["low_support"].null_count() == n.height - int(n["token_detector"].sum())
    np.testing.assert_allclose(n["mi_position_bits"].to_numpy(), n["mi_position"].to_numpy() / np.log(2))
    top = n.filter(pl.col("token_detector")).sort("n_active", descending=True).row(0, named=True)
    marked = n.with_columns(
        low_support=pl.when((pl.col("layer") == top["layer"]) & (pl.col("neuron") == top["neuron"]))
        .then(True)
        .otherwise(pl.col("low_support"))
    )
    a = Analysis(marked, r.analysis.layers, r.analysis.tokens, r.analysis.positions, r.analysis.metadata)
    html = report.write_report(a, tmp_path / "rep", max_neuron_pages=0).read_text()
    card = html[html.index(f'id="card-L{top["layer"]}-N{top["neuron"]}"') :]
    card = card[: card.index('<div class="card">') if '<div class="card">' in card else None]
    assert '<span class="badge">low support</span>' in card and "fewer than 5 times" in card
    assert "<th>Low-support token detectors</th><td>1 (" in html
    pos = n.filter(pl.col("positional")).sort("mi_position", descending=True).row(0, named=True)
    card = html[html.index(f'id="card-L{pos["layer"]}-N{pos["neuron"]}"') :]
    assert f"{pos['mi_position']:.3f} nats ({pos['mi_position_bits']:.3f} bits)" in card[: card.index("</table>")]
    assert (
        "<th>Low-support token detectors</th>"
        not in report.write_report(r.analysis, tmp_path / "plain", max_neuron_pages=0).read_text()
    )
    # the terminal card (`opt-neurons show`) and the neuron pages show the same: low support, bits, sources
    from opt_neurons.report.neuron_pages import page_name, write_neuron_pages
    from opt_neurons.show import card_text

    freq = {s: top["n_active_by_source"][s] / r.analysis.metadata["source_tokens"][s] for s in ("prose", "code")}
    assert freq == pytest.approx(top["frequency_by_source"])
    by_source = ", ".join(f"{s} {freq[s]:.4g} ({top['n_active_by_source'][s]:,})" for s in ("prose", "code"))
    text = card_text(a, top["layer"], top["neuron"], model=None)
    assert ": token detector (low support)" in text and "  low support: a detected token occurs fewer than 5" in text
    assert f"  frequency by source (activations): {by_source}\n" in text
    text = card_text(a, pos["layer"], pos["neuron"], model=None)
    bits = pos["mi_position"] / np.log(2)
    assert f"  I(act; pos): {pos['mi_position']:.4g} nats ({bits:.4g} bits)\n" in text and "low support" not in text
    write_neuron_pages(a, tmp_path / "pages")
    page = (tmp_path / "pages" / "neurons" / page_name(top["layer"], top["neuron"])).read_text()
    assert '<span class="badge">low support</span>' in page and "fewer than 5 times" in page
    assert f"<tr><th>frequency by source</th><td>{by_source} (" in page
    page = (tmp_path / "pages" / "neurons" / page_name(pos["layer"], pos["neuron"])).read_text()
    assert f"{pos['mi_position']:.3f} nats ({bits:.3f} bits)" in page and "low support" not in page

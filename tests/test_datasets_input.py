"""Hugging Face datasets as data (in memory, streaming, and by "hf:" name from the datasets cache offline) give the
same tables as the same text passed as strings; data that runs out before n_tokens says so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import opt_neurons
from opt_neurons import DataError
from opt_neurons.report import _headline_rows, headline

datasets = pytest.importorskip("datasets")

TEXTS = [f"Document {i}: the {'quick brown fox' if i % 3 else 'lazy dog'} {'jumps ' * (i % 5)}over {i * 7} fences."
         for i in range(60)]  # fmt: skip
SOURCES = ["prose" if i % 3 else "code" for i in range(60)]
N_TOKENS = 300  # 5 sequences of T = 64; the texts hold more


def assert_same_tables(a, b):
    """The same tables; `a` may add the per-source columns of a source_column (checked to split n_active)."""
    for name in ("neurons", "layers", "tokens", "positions"):
        x, y = getattr(a, name), getattr(b, name)
        assert set(x.columns) - set(y.columns) <= {"n_active_by_source", "frequency_by_source",
                                                    "dead_fraction_by_source"}, name  # fmt: skip
        assert x.select(y.columns).equals(y), name
    if "n_active_by_source" in a.neurons.columns:
        split = a.neurons.unnest("n_active_by_source")
        assert (split["prose"] + split["code"] == split["n_active"]).all()
        assert a.metadata["source_tokens"] == {"code": int((a._data.source_ids[:, :64] == 0).sum()),
                                               "prose": int((a._data.source_ids[:, :64] == 1).sum())}  # fmt: skip
    for key in ("n_tokens", "n_sequences", "data_sha256", "position_totals"):
        assert a.metadata[key] == b.metadata[key], key


@pytest.fixture(scope="module")
def from_strings(tiny_opt):
    return opt_neurons.analyze(tiny_opt, TEXTS, n_tokens=N_TOKENS, progress=False)


def test_dataset_in_memory(tiny_opt, from_strings):
    ds = datasets.Dataset.from_dict({"body": TEXTS, "set": SOURCES})
    a = opt_neurons.analyze(tiny_opt, ds, n_tokens=N_TOKENS, text_column="body", source_column="set", progress=False)
    assert_same_tables(a, from_strings)
    src = a.metadata["data_sources"][0]
    assert src["text_column"] == "body" and src["source_column"] == "set"
    assert set(src["documents_per_source"]) == {"prose", "code"}
    read = sum(src["documents_per_source"].values())
    assert src["documents_per_source"]["code"] == len(range(0, read, 3))  # every third document read is code
    assert not a.metadata["data_exhausted"] and a.metadata["requested_tokens"] == N_TOKENS


def test_iterable_dataset_streams(tiny_opt, from_strings):
    def rows():
        for t, s in zip(TEXTS, SOURCES):
            yield {"text": t, "meta": {"set_name": s}}

    ds = datasets.IterableDataset.from_generator(rows)
    a = opt_neurons.analyze(tiny_opt, ds, n_tokens=N_TOKENS, source_column="meta.set_name", progress=False)
    assert_same_tables(a, from_strings)
    assert set(a.metadata["data_sources"][0]["documents_per_source"]) == {"prose", "code"}


def cache_dataset(cache, repo_id: str, splits: dict):
    """What load_dataset(repo_id) leaves in the datasets cache when online: <ns>___<name>/<config>/<version>/<hash>."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    files = {}
    for split, table in splits.items():
        files[split] = str(cache.parent / f"{repo_id.replace('/', '_')}-{split}.parquet")
        datasets.Dataset.from_dict(table).to_parquet(files[split])
    b = Parquet(cache_dir=str(cache.parent / "build"), dataset_name=repo_id.split("/")[-1], data_files=files)
    b.download_and_prepare()
    shutil.copytree(b.cache_dir, cache / repo_id.replace("/", "___") / "default" / "0.0.0" / "0123456789abcdef")


def test_hf_name_from_the_cache_offline(tiny_opt, from_strings, tmp_path, monkeypatch):
    cache = tmp_path / "datasets-cache"
    cache_dataset(cache, "someone/tiny-texts", {"train": {"text": TEXTS}})
    cache_dataset(cache, "someone/two-splits", {"train": {"text": TEXTS}, "test": {"text": TEXTS[:3]}})
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    for spec in ("hf:someone/tiny-texts", "hf:someone/tiny-texts::train", "hf:someone/tiny-texts:default:train"):
        a = opt_neurons.analyze(tiny_opt, spec, n_tokens=N_TOKENS, progress=False)
        assert_same_tables(a, from_strings)
        assert a.metadata["data_sources"][0]["name"] == spec
    with pytest.raises(DataError, match="cannot load 'hf:someone/not-cached'.*datasets cache"):
        opt_neurons.analyze(tiny_opt, "hf:someone/not-cached", progress=False)
    with pytest.raises(DataError, match=r"has splits \['test', 'train'\]: name one, e.g. hf:someone/two-splits::test"):
        opt_neurons.analyze(tiny_opt, "hf:someone/two-splits", progress=False)
    with pytest.raises(DataError, match="write hf:NAME"):
        opt_neurons.analyze(tiny_opt, "hf:a:b:c:d", progress=False)


def test_bad_columns_and_splits(tiny_opt):
    ds = datasets.Dataset.from_dict({"body": TEXTS})
    with pytest.raises(DataError, match="no column 'text'.*text_column="):
        opt_neurons.analyze(tiny_opt, ds, progress=False)
    with pytest.raises(DataError, match="no column 'src'"):
        opt_neurons.analyze(tiny_opt, ds, text_column="body", source_column="src", progress=False)
    with pytest.raises(DataError, match=r"several splits: pass one of them, e.g. data=ds\['train'\]"):
        opt_neurons.analyze(tiny_opt, datasets.DatasetDict(train=ds), progress=False)
    with pytest.raises(DataError, match="must hold strings"):
        opt_neurons.analyze(tiny_opt, datasets.Dataset.from_dict({"text": [1, 2]}), progress=False)
    stream = datasets.IterableDataset.from_generator(lambda: ({"body": t, "meta": {"set": "a"}} for t in TEXTS))
    assert stream.column_names is None  # known only once read
    with pytest.raises(DataError, match=r"no column 'text' \(columns: \['body', 'meta'\]\)"):
        opt_neurons.analyze(tiny_opt, stream, progress=False)
    with pytest.raises(DataError, match="source_column 'meta.name'.* has no field 'name'"):
        opt_neurons.analyze(tiny_opt, stream, text_column="body", source_column="meta.name", progress=False)
    with pytest.raises(DataError, match="files are read from their 'text'"):
        opt_neurons.analyze(tiny_opt, TEXTS, text_column="body", progress=False)


def test_without_the_datasets_package(tiny_opt, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now raises ImportError
    with pytest.raises(DataError, match="pip install datasets"):
        opt_neurons.analyze(tiny_opt, "hf:someone/tiny-texts", progress=False)


def test_data_that_runs_out_says_so(tiny_opt, tmp_path):
    short = TEXTS[:5]
    with pytest.warns(RuntimeWarning, match=r"the data ran out after [\d,]+ of the 100,000 tokens asked for"):
        a = opt_neurons.analyze(tiny_opt, datasets.Dataset.from_dict({"text": short}), n_tokens=100_000,
                                progress=False, out=tmp_path / "run")  # fmt: skip
    m = a.metadata
    assert m["data_exhausted"] and m["requested_tokens"] == 100_000 and m["n_tokens"] < 100_000
    assert opt_neurons.load(tmp_path / "run").metadata["data_exhausted"]
    data_row = dict(_headline_rows(headline(a), m))["Data"]
    assert data_row.startswith(f"{m['n_tokens']:,} tokens") and "the data ran out: 100,000 tokens asked for" in data_row


def test_cli_reads_a_cached_dataset(tiny_opt, tmp_path):
    cache = tmp_path / "datasets-cache"
    cache_dataset(cache, "someone/tiny-texts", {"train": {"body": TEXTS, "set": SOURCES}})
    out = tmp_path / "cli"
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "opt_neurons.cli", "analyze", str(tiny_opt), "--data",
                        "hf:someone/tiny-texts", "--text-column", "body", "--source-column", "set", "--tokens",
                        str(N_TOKENS), "--out", str(out), "--no-progress"], capture_output=True, text=True, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    src = opt_neurons.load(out).metadata["data_sources"][0]
    assert src["name"] == "hf:someone/tiny-texts" and set(src["documents_per_source"]) == {"prose", "code"}
    r = subprocess.run([sys.executable, "-m", "opt_neurons.cli", "analyze", str(tiny_opt), "--data",
                        "hf:someone/tiny-texts", "--out", str(out), "--no-progress"], capture_output=True, text=True,
                       env=env)  # fmt: skip
    assert r.returncode == 2 and "no column 'text'" in r.stderr and "Traceback" not in r.stderr

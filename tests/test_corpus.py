"""Tests for the bundled default corpus (opt_neurons.corpus)."""

from __future__ import annotations

import itertools

import pytest

from opt_neurons import corpus
from opt_neurons.corpus import SOURCES, content_hash, iter_documents


def test_every_source_present_and_nonempty():
    assert SOURCES == ("prose", "code", "math", "docs")
    for name in SOURCES:
        path = corpus.source_path(name)
        assert path.is_file() and path.stat().st_size > 100_000, path
        docs = list(itertools.islice(iter_documents([name]), 5))
        assert len(docs) == 5
        assert all(src == name and text.strip() for src, text in docs)


def test_interleaving_mixes_sources():
    first = list(itertools.islice(iter_documents(), 8))
    assert [s for s, _ in first] == list(SOURCES) * 2
    # deterministic order
    assert first == list(itertools.islice(iter_documents(), 8))
    # a subset keeps SOURCES order and drops the rest
    sub = [s for s, _ in itertools.islice(iter_documents(["docs", "code"]), 4)]
    assert sub == ["code", "docs", "code", "docs"]


def test_round_robin_exhausts_every_source():
    counts = dict.fromkeys(SOURCES, 0)
    for name, _ in iter_documents():
        counts[name] += 1
    assert all(n > 50 for n in counts.values()), counts
    # the tail of the stream is the longest source alone
    assert counts["prose"] == max(counts.values())


def test_unknown_source_rejected():
    with pytest.raises(ValueError):
        list(iter_documents(["nope"]))
    with pytest.raises(ValueError):
        content_hash([])


def test_gpt2_token_count_over_3m():
    from conftest import gpt2_tokenizer

    tok = gpt2_tokenizer()
    # Tokenize every 3rd document of each source and extrapolate by bytes.
    total = 0.0
    for name in SOURCES:
        texts = [t for _, t in iter_documents([name])]
        sample = texts[::3]
        n_tok = sum(len(ids) for ids in tok(sample)["input_ids"])
        n_bytes = sum(len(t.encode("utf-8")) for t in sample)
        all_bytes = sum(len(t.encode("utf-8")) for t in texts)
        est = n_tok * all_bytes / n_bytes
        assert est > 200_000, (name, est)
        total += est
    assert total > 3_000_000, total


def test_content_hash_stable_and_selection_sensitive():
    h = content_hash()
    assert len(h) == 64 and h == content_hash()
    assert h == content_hash(list(reversed(SOURCES)))  # order-insensitive selection
    assert content_hash(["prose"]) != h
    assert content_hash(["prose"]) != content_hash(["code"])
    assert len({content_hash([s]) for s in SOURCES}) == len(SOURCES)

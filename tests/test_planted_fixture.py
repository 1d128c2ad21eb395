"""Proves the planted OPT fixture (tests/planted.py) with plain float forward hooks on fc1.

No opt_neurons code is involved: the model is loaded through transformers, either from the HF hub cache
layout with HF_HUB_OFFLINE=1 + HF_HUB_CACHE in a fresh subprocess, or from the local copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import planted as P  # noqa: E402

HUB_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hub_id, tokens_path, out_path = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(hub_id).eval()
    tok = AutoTokenizer.from_pretrained(hub_id)
    tokens = torch.as_tensor(np.load(tokens_path))
    layers = model.model.decoder.layers
    acts = [[] for _ in layers]
    hooks = [lyr.fc1.register_forward_hook(lambda m, a, o, i=i: acts[i].append((o > 0).numpy()))
             for i, lyr in enumerate(layers)]
    with torch.no_grad():
        for i in range(0, tokens.shape[0], 8):
            ids = tokens[i:i + 8]
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    n, t = tokens.shape
    act = np.stack([np.concatenate(a).reshape(n, t, -1) for a in acts])
    np.save(out_path, act)
    cfg = model.config
    print(json.dumps(dict(
        cls=type(model).__name__, dtype=str(next(model.parameters()).dtype),
        bos=cfg.bos_token_id, eos=cfg.eos_token_id, T=cfg.max_position_embeddings,
        ffn=cfg.ffn_dim, layers=cfg.num_hidden_layers, relu=cfg.activation_function,
        pre_ln=cfg.do_layer_norm_before, tok_bos=tok.bos_token_id, tok_eos=tok.eos_token_id,
        ids=tok("The cat sat on the river bank")["input_ids"],
        path=getattr(cfg, "_name_or_path", ""))))
    """
)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> P.Planted:
    return P.build_planted_opt(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def hub_run(planted, tmp_path_factory):
    """Load by hub id in a fresh interpreter with HF_HUB_OFFLINE=1 and HF_HUB_CACHE, hook fc1."""
    d = tmp_path_factory.mktemp("hubrun")
    np.save(d / "tokens.npy", planted.tokens)
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(planted.hub_cache), TRANSFORMERS_OFFLINE="1", HF_HOME=str(d / "hf_home")
    )
    env.pop("HF_HUB_ENABLE_HF_TRANSFER", None)
    res = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, planted.hub_id, str(d / "tokens.npy"), str(d / "act.npy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(d),
    )
    assert res.returncode == 0, res.stderr[-4000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    return info, np.load(d / "act.npy")


@pytest.fixture(scope="module")
def act(hub_run):
    return hub_run[1]


def test_hub_layout(planted):
    repo = planted.hub_cache / ("models--" + planted.hub_id.replace("/", "--"))
    commit = (repo / "refs" / "main").read_text().strip()
    assert commit == planted.revision and len(commit) == 40
    int(commit, 16)
    snap = repo / "snapshots" / commit
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (snap / name).is_file(), name
        assert (planted.model_dir / name).is_file(), name


def test_hub_load_offline(planted, hub_run):
    info, act = hub_run
    assert info["cls"] == "OPTForCausalLM" and info["dtype"] == "torch.float32"
    assert info["bos"] == info["eos"] == info["tok_bos"] == info["tok_eos"] == planted.bos_id
    assert info["T"] == planted.seq_len and info["ffn"] == planted.ffn_dim
    assert info["layers"] == planted.n_layers and info["relu"] == "relu" and info["pre_ln"]
    assert planted.tokenizer_prepends_bos and info["ids"][0] == planted.bos_id
    assert P.SPECIAL_WORDS["cat"] in info["ids"] and P.SPECIAL_WORDS["river"] in info["ids"]
    assert act.shape == (planted.n_layers, *planted.tokens.shape, planted.ffn_dim)
    # the local copy gives identical activations
    assert np.array_equal(act, P.float_reference(planted))


def test_in_process_cache_dir(planted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(planted.hub_id, cache_dir=planted.hub_cache, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(planted.hub_id, cache_dir=planted.hub_cache, local_files_only=True)
    assert m.config.ffn_dim == planted.ffn_dim and tok.bos_token_id == planted.bos_id
    tok2 = AutoTokenizer.from_pretrained(str(planted.model_dir))
    assert tok2("hello")["input_ids"][0] == planted.bos_id


def test_data(planted):
    tok = planted.tokens
    assert tok.dtype == np.int64 and tok.shape == (32, planted.seq_len)
    assert (tok[:, 0] == planted.bos_id).all() and (tok[:, 1:] != planted.bos_id).all()
    assert 200 <= len(np.unique(tok)) <= 400
    again = P._make_tokens(np.random.default_rng(0), *tok.shape, dict(P.SPECIAL_WORDS))[0]
    assert np.array_equal(again, tok)


def test_dead(planted, act):
    assert len([k for k in planted.dead if k[0] == 0]) >= 3
    assert len([k for k in planted.dead if k[0] == 1]) >= 3
    assert (0, planted.ffn_dim - 1) in planted.dead and (1, planted.ffn_dim - 1) in planted.dead
    for layer, n in planted.dead:
        assert not act[layer, :, :, n].any()
    # nothing else is dead
    alive = act.any(axis=(1, 2))
    assert {(int(l), int(n)) for l, n in zip(*np.nonzero(~alive))} == planted.dead


def test_token_detectors(planted, act):
    tok = planted.tokens
    singles = [k for k, v in planted.token_detectors.items() if len(v) == 1 and k[0] == 0]
    triples = [k for k, v in planted.token_detectors.items() if len(v) == 3 and k[0] == 0]
    assert len(singles) >= 3 and len(triples) >= 2
    for (layer, n), ids in planted.token_detectors.items():
        expect = np.isin(tok, ids)
        for i in ids:
            assert (tok == i).sum() >= 5
        assert np.array_equal(act[layer, :, :, n], expect), (layer, n)
        assert P.method_token_detector(act[layer, :, :, n], tok, 1)


def test_trigram_detector(planted, act):
    tok = planted.tokens
    assert planted.trigram_detectors
    for (layer, n), (a, b, c) in planted.trigram_detectors.items():
        expect = np.zeros(tok.shape, bool)
        expect[:, 2:] = (tok[:, :-2] == a) & (tok[:, 1:-1] == b) & (tok[:, 2:] == c)
        assert expect.sum() >= 30
        got = act[layer, :, :, n]
        assert np.array_equal(got, expect)
        # attention based: c, b and a also occur elsewhere, where the neuron stays silent
        c_occ = tok == c
        assert (c_occ & ~got).sum() >= 0.3 * c_occ.sum()
        near = np.zeros(tok.shape, bool)  # (x, b, c) with x != a, and (a, x, c) with x != b
        near[:, 2:] = (tok[:, 2:] == c) & (
            ((tok[:, 1:-1] == b) & (tok[:, :-2] != a)) | ((tok[:, 1:-1] != b) & (tok[:, :-2] == a))
        )
        assert near.sum() >= 10 and not got[near].any()
        assert not P.method_token_detector(got, tok, 1)
        assert P.method_token_detector(got, tok, 3)


def test_positional(planted, act):
    t = planted.seq_len
    kinds = {}
    for (layer, n), info in planted.positional.items():
        got = act[layer, :, :, n]
        if info["pure"]:
            inside = np.zeros(t, bool)
            for s, e in info["intervals"]:
                inside[s:e] = True
            assert (got == inside[None, :]).all(), (layer, n)
        r = P.method_positional(got)
        assert r["positional"] and r["kind"] == info["kind"] and r["intervals"] == info["intervals"]
        kinds[info["design"]] = (info["kind"], info["intervals"])
    assert kinds["start"] == ("two_sided", [(0, t // 4)])
    assert kinds["end"] == ("two_sided", [(3 * t // 4, t)])
    assert kinds["mid"] == ("two_sided", [(3 * t // 8, 5 * t // 8)])
    assert kinds["osc"][0] == "oscillatory" and len(kinds["osc"][1]) >= 3
    assert kinds["one_sided"] == ("one_sided", [(0, t // 4)])
    assert kinds["other"] == ("other", [(3 * t // 8, 5 * t // 8)])


def test_expected_matches_everything(planted, act):
    exp = planted.expected()
    assert (
        set(exp)
        == planted.dead
        | set(planted.token_detectors)
        | set(planted.trigram_detectors)
        | set(planted.positional)
        | planted.bos_only
    )
    for (layer, n), m in exp.items():
        assert np.array_equal(act[layer, :, :, n], m), (layer, n)
        me = planted.method_expect[(layer, n)]
        assert me["n_active"] == int(m.sum())
        assert me["token_detector"] == ((layer, n) in planted.token_detectors)
        assert me["positional"] == ((layer, n) in planted.positional)
        if (layer, n) in planted.trigram_detectors:
            assert me["trigram_detector"]
    for layer, n in planted.bos_only:
        assert act[layer, :, 0, n].all() and not act[layer, :, 1:, n].any()


def test_ordinary(planted, act):
    tok = planted.tokens
    f, L = planted.ffn_dim, planted.n_layers
    special = (
        planted.dead
        | set(planted.token_detectors)
        | set(planted.trigram_detectors)
        | set(planted.positional)
        | planted.bos_only
    )
    assert planted.ordinary == {(l, n) for l in range(L) for n in range(f)} - special
    body_tok = tok[:, 1:].reshape(-1)
    for layer, n in sorted(planted.ordinary):
        a = act[layer, :, :, n]
        body = a[:, 1:].reshape(-1)
        assert 0.01 < body.mean() < 0.6
        # not exactly token-only: some token fires on some occurrences and not on others
        fired = np.unique(body_tok[body])
        silent = np.unique(body_tok[~body])
        assert len(np.intersect1d(fired, silent)) >= 5, (layer, n)
        # not position-only
        assert (a.any(0) & ~a.all(0)).sum() > 0
        assert not P.method_token_detector(a, tok, 1)
        assert P.method_positional(a)["mi"] < 0.05


def test_suppression_columns(planted):
    from transformers import OPTForCausalLM

    m = OPTForCausalLM.from_pretrained(str(planted.model_dir))
    wu = m.lm_head.weight.detach().double().numpy()
    for (layer, n), ids in planted.token_detectors.items():
        v = m.model.decoder.layers[layer].fc2.weight[:, n].detach().double().numpy()
        s = wu @ v
        assert (np.mean(s[ids]) < 0) == planted.suppresses[(layer, n)]
    assert any(not x for x in planted.suppresses.values())


def test_deterministic(planted, tmp_path):
    again = P.build_planted_opt(tmp_path, validate=False)
    assert again.revision == planted.revision
    assert np.array_equal(again.tokens, planted.tokens)

    def digest(p: Path) -> str:
        return hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()

    assert digest(again.model_dir) == digest(planted.model_dir)


def test_reduced_precision_keeps_planting(planted):
    import torch
    from transformers import OPTForCausalLM

    m = OPTForCausalLM.from_pretrained(str(planted.model_dir), dtype=torch.bfloat16).eval()
    got = P.fc1_active(m, planted.tokens)
    for (layer, n), mask in planted.expected().items():
        assert np.array_equal(got[layer, :, :, n], mask), (layer, n)

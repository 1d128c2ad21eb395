"""Shared fixtures: small OPT checkpoints built from OPTConfig and saved locally (no hub access)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported anywhere

import numpy as np
import pytest
import torch

TOKENIZER_DIR = Path(__file__).resolve().parent / "data" / "gpt2-bpe"


def gpt2_tokenizer():
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(TOKENIZER_DIR)


def save_tiny_opt(path: Path, *, activation: str = "relu", seed: int = 0, max_positions: int = 64,
                  ffn_dim: int = 100, layers: int = 2) -> Path:  # fmt: skip
    from transformers import OPTConfig, OPTForCausalLM

    tok = gpt2_tokenizer()
    cfg = OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers, ffn_dim=ffn_dim,
                    num_attention_heads=2, max_position_embeddings=max_positions, word_embed_proj_dim=32,
                    activation_function=activation, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.eos_token_id)  # fmt: skip
    torch.manual_seed(seed)
    OPTForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_opt(tmp_path_factory) -> Path:
    """A random 2-layer OPT (100 neurons per layer, 64 positions) with the GPT-2 tokenizer."""
    return save_tiny_opt(tmp_path_factory.mktemp("tiny") / "opt-tiny")


@pytest.fixture(scope="session")
def tiny_tokens() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = rng.integers(3, 5000, size=(5, 64))
    t[:, 0] = 50256
    return t

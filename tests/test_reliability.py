"""Defects a hostile probe found (issue 21): each test here failed before its fix.

Silently wrong results (stale checkpoints, NaN activations, dropout, out-of-range thresholds, misread data),
lost work (unusable or shared output folders) and tracebacks instead of one-line errors.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import opt_neurons
from opt_neurons.cli import main
from opt_neurons.errors import (
    CheckpointError,
    DataError,
    NonFiniteActivationError,
    OptionError,
    OptNeuronsError,
    OutputError,  # fmt: skip
    RunFolderError,
    StateFileError,
)
from test_execution import assert_same, interrupt_at_update

from conftest import save_tiny_opt


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    rng = np.random.default_rng(3)
    t = rng.integers(3, 400, size=(8, 32))
    t[:, 0] = 50256
    return t


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_opt(tmp_path_factory.mktemp("rel") / "opt", layers=2, max_positions=32, ffn_dim=70)


def interrupted_run(model, tokens, out, monkeypatch) -> None:
    """Leave a checkpoint of the first 4 sequences in `out`, as a Ctrl-C would."""
    interrupt_at_update(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        opt_neurons.analyze(model, tokens, batch_size=2, progress=False, out=out, checkpoint_every=100)
    assert (out / "checkpoint" / "state.bin").exists()


# 1. Stale checkpoints


def test_new_weights_in_the_same_folder_do_not_resume_the_old_checkpoint(model_dir, tokens, tmp_path, monkeypatch,
                                                                         capfd):  # fmt: skip
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    out = tmp_path / "run"
    interrupted_run(folder, tokens, out, monkeypatch)
    save_tiny_opt(folder, layers=2, max_positions=32, ffn_dim=70, seed=7)  # new weights, same path
    fresh = opt_neurons.analyze(folder, tokens, batch_size=2, progress=False)
    capfd.readouterr()
    a = opt_neurons.analyze(folder, tokens, batch_size=2, progress=False, out=out)
    err = capfd.readouterr().err
    assert a.metadata["resumed_sequences"] == 0
    assert "another run (weights differs): not resumed" in err
    assert_same(a, fresh)
    assert len(list(tmp_path.glob("run/checkpoint-unused-*/state.bin"))) == 1  # set aside, not overwritten


def test_a_model_object_changed_in_memory_does_not_resume(model_dir, tokens, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = tmp_path / "run"
    interrupted_run(model, tokens, out, monkeypatch)
    with torch.no_grad():
        model.model.decoder.layers[0].fc1.bias += 0.5
    a = opt_neurons.analyze(model, tokens, batch_size=2, progress=False, out=out)
    assert a.metadata["resumed_sequences"] == 0
    assert_same(a, opt_neurons.analyze(model, tokens, batch_size=2, progress=False))


def test_the_same_weights_still_resume(model_dir, tokens, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_run(model_dir, tokens, out, monkeypatch)
    a = opt_neurons.analyze(model_dir, tokens, batch_size=2, progress=False, out=out)
    assert a.metadata["resumed_sequences"] == 4


# 3. Non-finite activations


@pytest.mark.parametrize("execution", ["memory", "layer"])
def test_nan_activations_stop_the_run_naming_the_layer(model_dir, tokens, tmp_path, execution):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        model.model.decoder.layers[1].fc1.weight[5, 0] = float("nan")  # one neuron of layer 1
    out = tmp_path / "run"
    with pytest.raises(
        NonFiniteActivationError, match=r"layer 1's feed-forward activations hold NaN .* bfloat16 or float32"
    ):
        opt_neurons.analyze(model, tokens, batch_size=2, progress=False, out=out, execution=execution,
                            checkpoint_every=1)  # fmt: skip
    assert not (out / "checkpoint" / "state.bin").exists()  # the first batch already had them: nothing to keep


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the deferred check runs on CUDA devices only")
def test_nan_activations_on_a_gpu_are_caught_before_a_checkpoint(model_dir, tokens, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval().cuda()
    with torch.no_grad():
        model.model.decoder.layers[0].fc1.bias[3] = float("inf")
    with pytest.raises(NonFiniteActivationError, match="layer 0"):
        opt_neurons.analyze(model, tokens, batch_size=2, progress=False, out=tmp_path / "run", checkpoint_every=1)
    assert not (tmp_path / "run" / "checkpoint" / "state.bin").exists()


# 4. Train mode


def test_a_model_in_train_mode_runs_in_eval_mode_and_is_given_back_training(model_dir, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dropout=0.5).eval()
    reference = opt_neurons.analyze(model, tokens, batch_size=2, progress=False)
    model.train()
    a = opt_neurons.analyze(model, tokens, batch_size=2, progress=False)
    assert model.training and all(m.training for m in model.modules())
    assert_same(a, reference)


# 5. Thresholds and options, checked before anything is loaded

BAD = [
    ({"coverage": 1.5}, r"coverage=1.5 is out of range: it must lie in \(0.0, 1.0\]"),
    ({"coverage": float("nan")}, "coverage must be finite"),
    ({"mi_threshold": -0.1}, "mi_threshold=-0.1 is out of range"),
    ({"low": 0.6, "high": 0.5}, "strong_low <= low < high <= strong_high"),
    ({"max_tokens": 2.5}, "max_tokens must be an integer"),
    ({"max_tokens": True}, "max_tokens must be an integer"),
    ({"seq_len": 1}, r"seq_len=1 is out of range: it must lie in \[2, inf\)"),
    ({"seq_len": -4}, "seq_len=-4 is out of range"),
    ({"batch_size": 0}, "batch_size=0 is out of range"),
    ({"block_size": 0}, "block_size=0 is out of range"),
    ({"ngram_capacity": -1}, "ngram_capacity=-1 is out of range"),
    ({"n_tokens": 1.5}, "n_tokens must be an integer"),
    ({"n_tokens": "100"}, "n_tokens must be an integer"),
    ({"detail_tokens": 0}, "detail_tokens=0 is out of range"),
    ({"checkpoint_every": 0}, "checkpoint_every=0 is out of range"),
    ({"execution": "gpu"}, "unknown execution 'gpu'"),
    ({"dtype": "float8"}, "unknown dtype 'float8'"),
    ({"covrage": 0.9}, r"unknown threshold\(s\) \['covrage'\]"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[str(k) for k, _ in BAD])
def test_bad_options_fail_before_the_model_is_loaded(kwargs, message):
    # The model does not exist: a check after loading would raise ModelError instead.
    with pytest.raises(OptionError, match=message):
        opt_neurons.analyze("no-such-org/no-such-model", ["text"], progress=False, **kwargs)


def test_thresholds_in_range_are_accepted():
    t = opt_neurons.Thresholds(coverage=1.0, low=0.0, strong_low=0.0, high=1.0, strong_high=1.0, mi_threshold=0)
    assert t.coverage == 1.0 and not math.isnan(t.low)


# 6. Data that would be misread


@pytest.mark.parametrize("data,message", [
    ({"a": "some text", "b": "more"}, "data of type dict is not supported"),
    (np.arange(10), r"token id arrays must be 2-D \(n_seq, T\), got 1-D with shape \(10,\): reshape"),
    (np.zeros((2, 3, 4), np.int64), "got 3-D"),
    (42, "unsupported data of type int"),
])  # fmt: skip
def test_misread_data_kinds_get_a_clear_error_before_loading(data, message):
    with pytest.raises(DataError, match=message):
        opt_neurons.analyze("no-such-org/no-such-model", data, progress=False)


def test_token_ids_are_checked_against_the_embedding(tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    from conftest import gpt2_tokenizer

    tok = gpt2_tokenizer()  # 50,257 ids
    cfg = OPTConfig(vocab_size=1000, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                    max_position_embeddings=16, word_embed_proj_dim=16, bos_token_id=2, eos_token_id=2)  # fmt: skip
    OPTForCausalLM(cfg).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with pytest.raises(DataError, match=r"the tokenizer gives token id \d+, but the model embeds only 1000 ids"):
        opt_neurons.analyze(tmp_path / "m", ["The tokenizer is larger than the embedding."], progress=False)
    with pytest.raises(DataError, match=r"token ids must lie in \[0, 1000\) \(the model's embedding rows\)"):
        opt_neurons.analyze(tmp_path / "m", np.full((1, 8), 1000), progress=False)


# 7-8. The output folder


def test_an_output_path_that_is_a_file_fails_at_once(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        opt_neurons.analyze("no-such-org/no-such-model", ["text"], out=f, progress=False)


def test_an_output_folder_that_cannot_be_written_fails_at_once():
    with pytest.raises(OutputError, match="cannot write to the output folder"):
        opt_neurons.analyze("no-such-org/no-such-model", ["text"], out="/proc/opt-neurons-test", progress=False)


HOLD = """
import sys, time
from pathlib import Path
from opt_neurons.outdir import RunLock
lock = RunLock(Path(sys.argv[1]), "checkpoint")
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_on_the_same_folder_is_refused(model_dir, tokens, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=f"already in use by process {holder.pid}"):
            opt_neurons.analyze(model_dir, tokens, progress=False, out=out)
    finally:
        holder.kill()
        holder.wait()
    a = opt_neurons.analyze(model_dir, tokens, batch_size=2, progress=False, out=out)  # free again
    assert a.metadata["n_sequences"] == 8


# 10. One-line errors


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def assert_one_line(code: int, err: str, pattern: str) -> None:
    """Exit code 2 and one line of message (transformers' own loading progress bars aside)."""
    assert code == 2, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("opt-neurons: error: ") and pattern in lines[0], err


def test_malformed_jsonl_names_file_and_line(model_dir, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "fine"}\n{"text": "broken\n')
    code, err = run_cli(["analyze", model_dir, "--data", data, "--out", tmp_path / "o", "--no-progress"], capsys)
    assert_one_line(code, err, f"{data}:2: not valid JSON")
    data.write_text('{"text": "fine"}\n{"text": 5}\n')
    code, err = run_cli(["analyze", model_dir, "--data", data, "--out", tmp_path / "o", "--no-progress"], capsys)
    assert_one_line(code, err, f"{data}:2: the 'text' field must be a string, got int")


@pytest.mark.parametrize("flags,pattern", [
    (["--seq-len", "1"], "seq_len=1 is out of range"),
    (["--seq-len", "-3"], "seq_len=-3 is out of range"),
    (["--ngram-capacity", "-2"], "ngram_capacity=-2 is out of range"),
    (["--coverage", "nan"], "coverage must be finite"),
])  # fmt: skip
def test_cli_option_errors_are_one_line(flags, pattern, tmp_path, capsys):
    code, err = run_cli(["analyze", "no-such-org/no-such-model", "--out", tmp_path / "o", *flags], capsys)
    assert_one_line(code, err, pattern)


def flip_byte(path: Path, at: int) -> None:
    b = bytearray(path.read_bytes())
    b[at % len(b)] ^= 0x40
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("damage,error", [
    (lambda c: (c / "progress.json").write_text("{not json"), CheckpointError),
    (lambda c: (c / "progress.json").write_text("[1, 2]"), CheckpointError),
    (lambda c: (c / "state.bin").write_bytes(b""), StateFileError),
    (lambda c: (c / "state.bin").write_bytes((c / "state.bin").read_bytes()[:-100]), StateFileError),
    (lambda c: flip_byte(c / "state.bin", 5000), StateFileError),
])  # fmt: skip
def test_damaged_checkpoint_files_are_named_errors(model_dir, tokens, tmp_path, monkeypatch, damage, error):
    """A damaged checkpoint is refused (never resumed into wrong tables) with a message naming the fix; the CLI
    prints any OptNeuronsError as one line (test_cli_option_errors_are_one_line)."""
    out = tmp_path / "run"
    interrupted_run(model_dir, tokens, out, monkeypatch)
    damage(out / "checkpoint")
    with pytest.raises(error, match="delete the (checkpoint )?folder"):
        opt_neurons.analyze(model_dir, tokens, batch_size=2, progress=False, out=out)


@pytest.fixture(scope="module")
def saved_run(model_dir, tokens, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("saved") / "run"
    opt_neurons.analyze(model_dir, tokens, batch_size=2, progress=False, out=out)
    return out


@pytest.mark.parametrize("damage,pattern", [
    (lambda d: (d / "neurons.parquet").write_bytes(b"PAR1 not really"), "neurons.parquet cannot be read"),
    (lambda d: (d / "layers.parquet").unlink(), "missing layers.parquet"),
    (lambda d: (d / "metadata.json").write_text("{"), "metadata.json is not valid JSON"),
    (lambda d: (d / "metadata.json").write_text("[]"), "metadata.json holds no JSON object"),
    (lambda d: __import__("polars").DataFrame({"x": [1]}).write_parquet(d / "layers.parquet"),
     "layers.parquet lacks the columns"),
])  # fmt: skip
def test_damaged_run_folders_are_refused_by_load_and_report(saved_run, tmp_path, capsys, damage, pattern):
    d = tmp_path / "copy"
    shutil.copytree(saved_run, d)
    damage(d)
    with pytest.raises(RunFolderError, match=pattern):
        opt_neurons.load(d)
    code, err = run_cli(["report", d], capsys)
    assert_one_line(code, err, pattern)


def test_report_out_pointing_at_a_file_is_one_line(saved_run, tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("")
    code, err = run_cli(["report", saved_run, "--out", f], capsys)
    assert_one_line(code, err, "is a file, not a folder")


def test_every_error_is_an_opt_neurons_error():
    for cls in (CheckpointError, DataError, NonFiniteActivationError, OptionError, OutputError, RunFolderError):
        assert issubclass(cls, OptNeuronsError)


def test_a_damaged_weight_file_in_layer_major_is_a_model_error(model_dir, tokens, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # an interrupted download
    code, err = run_cli(["analyze", folder, "--execution", "layer", "--out", tmp_path / "o", "--no-progress"], capsys)
    assert_one_line(code, err, f"the weight file {f} cannot be read")

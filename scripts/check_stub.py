"""Check that python/opt_neurons/_core.pyi matches the compiled extension (after tokenizers'
bindings/python/stub.py --check): every constant, function, class, method, property and static method the
extension exposes is in the stub, and nothing else is, with the same parameter names, kinds (positional or
keyword-only) and defaults (where both sides spell a default out; `...` matches any).

Run: python scripts/check_stub.py  (exit code 1 and a list of differences when they disagree; run by
tests/test_core_binding.py).
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path
from types import ModuleType

STUB = Path(__file__).resolve().parent.parent / "python" / "opt_neurons" / "_core.pyi"

# A parameter: (name, kind, default): REQUIRED, ANY (`...`: not spelled out) or the default's repr.
Param = tuple[str, str, str]
REQUIRED, ANY = "<required>", "..."
# A member: kind ("constant", "function", "class", "method", "staticmethod", "classmethod", "property",
# "constructor") and its parameters (None where it has none).
Member = tuple[str, "list[Param] | None"]


def _kind(p: inspect.Parameter) -> str:
    if p.kind is inspect.Parameter.KEYWORD_ONLY:
        return "keyword-only"
    if p.kind is inspect.Parameter.VAR_POSITIONAL:
        return "*args"
    return "**kwargs" if p.kind is inspect.Parameter.VAR_KEYWORD else "positional"


def _params(obj: object, drop_first: bool) -> list[Param]:
    sig = inspect.signature(obj)  # type: ignore[arg-type]
    ps = list(sig.parameters.values())[1 if drop_first else 0 :]

    def default(p: inspect.Parameter) -> str:
        if p.default is inspect.Parameter.empty:
            return REQUIRED
        return ANY if p.default is Ellipsis else repr(p.default)

    return [(p.name, _kind(p), default(p)) for p in ps]


def _public(name: str) -> bool:
    return not name.startswith("_") or name == "__version__"


def runtime_members(module: ModuleType) -> dict[str, Member]:
    """What the compiled module exposes, by dotted name."""
    out: dict[str, Member] = {}
    for name in dir(module):
        if not _public(name):
            continue
        obj = getattr(module, name)
        if isinstance(obj, type):
            out[name] = ("class", None)
            sig = getattr(obj, "__text_signature__", None)
            if sig:
                out[f"{name}.__init__"] = ("constructor", _params(obj, drop_first=False))
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                key = f"{name}.{attr}"
                kind = type(value).__name__
                if kind in ("getset_descriptor", "member_descriptor", "property"):
                    out[key] = ("property", None)
                elif isinstance(value, staticmethod):
                    out[key] = ("staticmethod", _params(value.__func__, drop_first=False))
                elif isinstance(value, classmethod):
                    out[key] = ("classmethod", _params(value.__func__, drop_first=True))
                else:
                    out[key] = ("method", _params(value, drop_first=True))
        elif callable(obj):
            out[name] = ("function", _params(obj, drop_first=False))
        else:
            out[name] = ("constant", None)
    return out


def _stub_default(d: ast.expr | None) -> str:
    if d is None:
        return REQUIRED
    value = ast.literal_eval(d)
    return ANY if value is Ellipsis else repr(value)


def _stub_params(f: ast.FunctionDef, drop_first: bool) -> list[Param]:
    a = f.args
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    out: list[Param] = [(p.arg, "positional", _stub_default(d)) for p, d in zip(positional, defaults)]
    if a.vararg:
        out.append((a.vararg.arg, "*args", REQUIRED))
    out += [(p.arg, "keyword-only", _stub_default(d)) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        out.append((a.kwarg.arg, "**kwargs", REQUIRED))
    return out[1 if drop_first else 0 :]


def _same(a: list[Param] | None, b: list[Param] | None) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(
        (n, k) == (m, j) and (d == e or ANY in (d, e) and REQUIRED not in (d, e)) for (n, k, d), (m, j, e) in zip(a, b)
    )


def stub_members(text: str) -> dict[str, Member]:
    """What the stub declares, by dotted name."""
    out: dict[str, Member] = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = ("constant", None)
        elif isinstance(node, ast.FunctionDef):
            out[node.name] = ("function", _stub_params(node, drop_first=False))
        elif isinstance(node, ast.ClassDef):
            out[node.name] = ("class", None)
            for f in node.body:
                if not isinstance(f, ast.FunctionDef):
                    continue
                decorators = {d.id for d in f.decorator_list if isinstance(d, ast.Name)}
                key = f"{node.name}.{f.name}"
                if f.name == "__init__":
                    out[key] = ("constructor", _stub_params(f, drop_first=True))
                elif "property" in decorators:
                    out[key] = ("property", None)
                elif "staticmethod" in decorators:
                    out[key] = ("staticmethod", _stub_params(f, drop_first=False))
                elif "classmethod" in decorators:
                    out[key] = ("classmethod", _stub_params(f, drop_first=True))
                elif _public(f.name):
                    out[key] = ("method", _stub_params(f, drop_first=True))
    return {k: v for k, v in out.items() if _public(k.split(".")[-1]) or k.endswith(".__init__")}


def problems(module: ModuleType, stub_text: str) -> list[str]:
    """Every difference between the module and the stub, one line each (empty: they match)."""
    have, declared = runtime_members(module), stub_members(stub_text)
    out = [
        f"{k}: exposed by the extension ({have[k][0]}) but missing from the stub"
        for k in sorted(have.keys() - declared.keys())
    ]
    out += [f"{k}: in the stub but not exposed by the extension" for k in sorted(declared.keys() - have.keys())]
    for k in sorted(have.keys() & declared.keys()):
        (kind, params), (stub_kind, stub_params) = have[k], declared[k]
        if kind != stub_kind:
            out.append(f"{k}: a {kind} in the extension, a {stub_kind} in the stub")
        elif not _same(params, stub_params):
            out.append(f"{k}: parameters {params} in the extension, {stub_params} in the stub")
    return out


def main() -> int:
    from opt_neurons import _core

    found = problems(_core, STUB.read_text())
    for p in found:
        print(p, file=sys.stderr)
    if found:
        print(f"{STUB} does not match the compiled extension: update it", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

"""Every ``@triton.jit`` function in engine/ reads only globals that Triton's compiler accepts: other jit
functions, modules (``tl``, ``libdevice``) and ``tl.constexpr`` values. Why: CI runs the kernels in Triton's
CPU interpreter, which accepts a plain module-level number, while the GPU compiler refuses it
("Cannot access global variable ... from within @jit'ed function"); that shipped once, in
`engine.kv_int8_store._rint`, and broke int8 KV on every GPU."""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import pytest
import triton.language as tl

ENGINE = Path(__file__).resolve().parents[2] / "engine"


def _is_jit(dec: ast.expr) -> bool:
    target = dec.func if isinstance(dec, ast.Call) else dec
    return (isinstance(target, ast.Attribute) and target.attr == "jit") or getattr(target, "id", "") == "jit"


def _jit_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [n for n in tree.body if isinstance(n, ast.FunctionDef) and any(map(_is_jit, n.decorator_list))]


def _globals_read(fn: ast.FunctionDef) -> set[str]:
    local = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            local.add(node.id)
    return {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - local


def _allowed(value: object) -> bool:
    """Modules, constexprs and callables (jit helpers, builtins such as ``range``, ``tl`` functions)."""
    return isinstance(value, types.ModuleType | tl.constexpr) or callable(value)


MODULES = sorted(p for p in ENGINE.rglob("*.py") if "triton.jit" in p.read_text() and p.name != "__init__.py")


def test_the_scan_finds_the_kernel_modules() -> None:
    names = {p.name for p in MODULES}
    assert {"kv_int8_store.py", "paged_attn_triton.py", "fused_ops.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ENGINE.parent)))
def test_jit_functions_read_only_globals_the_compiler_accepts(path: Path) -> None:
    module = importlib.import_module(".".join(path.relative_to(ENGINE.parent).with_suffix("").parts))
    tree = ast.parse(path.read_text())
    fns = _jit_functions(tree)
    assert fns, f"{path.name} mentions triton.jit but no jit function was found"
    bad = [
        f"{fn.name} reads {name} = {getattr(module, name)!r}"
        for fn in fns
        for name in sorted(_globals_read(fn))
        if hasattr(module, name) and not _allowed(getattr(module, name))
    ]
    assert not bad, "non-constexpr globals in jit functions: " + "; ".join(bad)


def test_a_plain_number_read_by_a_jit_function_is_caught() -> None:
    src = "import triton\n_M = 3.0\n@triton.jit\ndef f(x):\n    return x + _M\n"
    module = types.ModuleType("probe")
    exec(compile(src, "probe", "exec"), module.__dict__)  # noqa: S102
    (fn,) = _jit_functions(ast.parse(src))
    assert [n for n in _globals_read(fn) if not _allowed(getattr(module, n))] == ["_M"]

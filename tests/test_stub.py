"""The type stub ``volley/_core.pyi`` names exactly what the compiled ``volley._core`` has, and
each function's parameters in the same order (checked against the signatures PyO3 records)."""

import ast
from pathlib import Path

import volley._core as core

STUB = Path(core.__file__).with_name("_core.pyi")


def _stub() -> ast.Module:
    return ast.parse(STUB.read_text())


def test_the_stub_names_everything_the_extension_has_and_nothing_else():
    tree = _stub()
    declared = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            declared.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared.add(node.target.id)
    present = {n for n in dir(core) if not n.startswith("__")}
    assert present - declared == set(), "in volley._core but not in _core.pyi"
    assert declared - present == set(), "in _core.pyi but not in volley._core"


def _names(text_signature: str) -> list[str]:
    """Parameter names from a ``__text_signature__`` such as ``(a, b=None, *, c=...)``."""
    names = []
    for part in text_signature.strip()[1:-1].split(","):
        part = part.strip()
        if part and part not in ("/", "*") and not part.startswith("$"):
            names.append(part.split("=")[0].strip().lstrip("*"))
    return names


def test_the_stub_gives_each_function_its_parameters_in_order():
    checked = 0
    for node in _stub().body:
        if not isinstance(node, ast.FunctionDef):
            continue
        text = getattr(getattr(core, node.name), "__text_signature__", None)
        if text is None:
            continue
        stub = [a.arg for a in node.args.args + node.args.kwonlyargs]
        # A parameter named like a keyword (``from``) is ``from_`` in the stub.
        assert [s.rstrip("_") for s in stub] == _names(text), node.name
        checked += 1
    assert checked > 30

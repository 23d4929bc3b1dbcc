"""The node snapshot's keys, as ``volley.nodes()`` and ``volley status --json`` give them, are
each named where users read about them: ``volley.nodes``'s docstring and the README."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import volley
from volley import _core

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.usefixtures("no_volley")
def test_every_key_of_the_snapshot_is_documented():
    volley.init(num_cpus=1)
    mine = [n for n in _core.local_nodes() if n["pid"] == os.getpid()]
    assert len(mine) == 1, "this driver's own node is not among the local ones"
    node = dict(mine[0])
    node.pop("socket")  # local_nodes' own: where that driver answers `volley status`
    doc = volley.nodes.__doc__ or ""
    readme = README.read_text()
    missing_doc = [k for k in node if f"``{k}``" not in doc]
    assert not missing_doc, f"volley.nodes() does not name {missing_doc}"
    for part in ("scheduler", "store"):
        keys = sorted(node[part])
        assert keys, part
        assert not [k for k in keys if f"``{k}``" not in doc], (part, keys)
        assert not [k for k in keys if f"`{k}`" not in readme], (part, keys)

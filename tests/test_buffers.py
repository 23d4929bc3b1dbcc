"""How the extension reads Python buffers on the way into the store and exposes the store on the
way out, under the stable ABI (crates/volley-py/src/buffer.rs).

The serializer only ever hands the engine contiguous byte views (``PickleBuffer.raw()``), so the
other shapes of buffer are given to ``_core.put`` directly here: a value whose pickle stream has
one out-of-band buffer, with the buffer object chosen by the test.
"""

from __future__ import annotations

import gc
import os
import pickle

import numpy as np
import pytest

import volley
from volley import _core

MiB = 1 << 20


def stream_with_one_buffer(n: int) -> bytes:
    """A pickle stream whose value is its one out-of-band buffer (of ``n`` bytes)."""
    return pickle.dumps(pickle.PickleBuffer(bytes(n)), protocol=5, buffer_callback=lambda b: None)


def in_store(view) -> bool:
    addr = np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            if "memfd:volley-store" in line:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo <= addr < hi:
                    return True
    return False


def test_a_large_buffer_is_copied_into_the_store_and_read_back_in_place(volley_shared):
    for src in (os.urandom(2 * MiB), bytearray(os.urandom(2 * MiB))):  # read-only and writable
        ref = _core.put(stream_with_one_buffer(len(src)), [src], [])
        back = volley.get(ref)
        assert bytes(back) == bytes(src)
        view = memoryview(back)
        assert view.readonly and view.format == "B" and in_store(view)
        with pytest.raises(TypeError):
            view[0] = 1


def test_a_strided_buffer_is_gathered(volley_shared):
    base = np.arange(4 * MiB, dtype=np.uint8)
    strided = memoryview(base)[::2]  # not contiguous: no single run of bytes to copy from
    ref = _core.put(stream_with_one_buffer(strided.nbytes), [strided], [])
    assert bytes(volley.get(ref)) == strided.tobytes()


def test_an_object_without_a_buffer_is_refused(volley_shared):
    with pytest.raises(TypeError):
        _core.put(stream_with_one_buffer(10), [object()], [])


def test_views_of_a_stored_value_keep_it_after_the_ref_goes(volley_shared):
    src = os.urandom(2 * MiB)
    ref = _core.put(stream_with_one_buffer(len(src)), [src], [])
    piece = memoryview(volley.get(ref))[MiB : MiB + 100]
    del ref
    gc.collect()
    others = [volley.put(np.zeros(2 * MiB, dtype=np.uint8)) for _ in range(3)]
    assert piece.tobytes() == src[MiB : MiB + 100]
    del others

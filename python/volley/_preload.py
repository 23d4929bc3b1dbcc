"""What the worker template preloads (``VOLLEY_PRELOAD``): read by the driver when it starts its
node, apart from ``_template.py`` so that the driver's side imports nothing of the worker's."""

from __future__ import annotations

import os
import sys

# Modules a driver commonly imports whose import is slow and safe to do before forking (no
# threads started at import, with the BLAS thread variables that `_worker` sets). A driver that
# has imported one of these when it starts its node gets it preloaded in the template, unless
# VOLLEY_PRELOAD says otherwise. Not pandas, scikit-learn or pyarrow: where pyarrow is
# installed, importing any of them loads it, and it starts jemalloc's background thread.
DEFAULT_PRELOAD = ("numpy", "scipy")


def default_preload() -> str:
    """The ``VOLLEY_PRELOAD`` value for a node started by this process: the user's own setting,
    else the modules of :data:`DEFAULT_PRELOAD` that this process has already imported.

    >>> import sys
    >>> "sys" in default_preload().split(",")
    False
    """
    own = os.environ.get("VOLLEY_PRELOAD")
    if own is not None:
        return own
    return ",".join(m for m in DEFAULT_PRELOAD if m in sys.modules)

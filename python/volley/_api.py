"""Moved to ``_session`` (this commit only renames; the next splits it by content)."""

import sys

from . import _session

sys.modules[__name__] = _session

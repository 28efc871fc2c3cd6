"""Where the embedded backends keep their files: ``$TASKER_STATE_DIR`` or ``./.tasker``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DEFAULT_STATE_DIR", "default_state_dir"]

DEFAULT_STATE_DIR = ".tasker"


def default_state_dir() -> Path:
    """``$TASKER_STATE_DIR`` if set, else ``./.tasker`` (relative to the working directory)."""
    return Path(os.environ.get("TASKER_STATE_DIR") or DEFAULT_STATE_DIR)

"""Where triolm keeps what it downloads or generates: the user's cache directory
(platformdirs: ~/.cache/triolm on Linux), or $TRIOLM_CACHE when set."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def triolm_cache_dir() -> Path:
    env = os.environ.get("TRIOLM_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("triolm"))

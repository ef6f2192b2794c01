"""Where the tests' own files are, and how a child process imports `support` as they do."""

from __future__ import annotations

import os
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = TESTS_DIR.parent
DATA_DIR = TESTS_DIR / "data"
TEMPLATES_DIR = TESTS_DIR / "templates"


def env_with_tests_on_path(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with `tests/` first on PYTHONPATH."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH")) if p)
    return env

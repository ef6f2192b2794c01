"""pytest fixtures for generated test models (register with
`pytest_plugins = ["support.fixtures"]` in the top-level conftest.py).

Models are cached on disk (see `model_factory.default_cache_dir`, or set
TRIOLM_TEST_MODEL_CACHE), so only the first test run pays for building them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from support.model_factory import TestModelPaths, default_cache_dir, make_test_model


@pytest.fixture(scope="session")
def generated_models_dir() -> Path:
    """Where generated models are cached (shared across test runs)."""
    return default_cache_dir()


@pytest.fixture(scope="session")
def tiny_model(generated_models_dir: Path) -> Callable[..., TestModelPaths]:
    """Factory: `tiny_model("qwen3")` -> TestModelPaths of the tiny qwen3 model, built
    once. Keyword arguments go to `make_test_model` (seed, gguf_types, sharded)."""
    built: dict[tuple, TestModelPaths] = {}

    def make(arch: str = "llama", **kwargs) -> TestModelPaths:
        key = (arch, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items())))
        if key not in built:
            built[key] = make_test_model(generated_models_dir, arch=arch, size="tiny", **kwargs)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama(tiny_model) -> TestModelPaths:
    """The tiny Llama-2-style model (SentencePiece vocab, llama2 chat template)."""
    return tiny_model("llama")

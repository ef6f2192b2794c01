"""The tiny Mistral test model in Mistral's native layout.

`make_test_model(arch="mistral")` writes a Hugging Face directory; Mistral also
publishes checkpoints as `params.json` + `consolidated.safetensors` + a
mistral-common tokenizer file, with other tensor names and q/k rows in interleaved
rotary order. `make_native_mistral_model` writes the same weights that way (through
`triolm.formats.mistral_native.to_native`, the loader's inverse), next to the HF
directory in the test-model cache, so a test can check that both layouts load and
generate the very same tokens.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file

from support.model_factory import TestModelPaths, _locked, make_test_model
from triolm.formats.mistral_native import params_json, to_native
from triolm.formats.safetensors_loader import read_safetensors

NATIVE_DIR = "native"
_FILES = ("params.json", "consolidated.safetensors")


def make_native_mistral_model(paths: TestModelPaths | None = None, seed: int = 0) -> Path:
    """The native-layout directory of the tiny mistral test model (`paths`, or the one
    `make_test_model(arch="mistral", seed=seed)` gives), written on first use."""
    if paths is None:
        paths = make_test_model(arch="mistral", seed=seed, gguf_types=())
    if paths.arch != "mistral":
        raise ValueError(f"the native layout is Mistral's; got a {paths.arch!r} test model")
    out = paths.root / NATIVE_DIR
    with _locked(paths.root / ".native.lock"):
        if all((out / name).exists() for name in _FILES) and _tokenizer_files(out):
            return out
        tmp = paths.root / (NATIVE_DIR + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tensors = read_safetensors(paths.hf_dir)
        save_file(to_native(paths.config, tensors), str(tmp / "consolidated.safetensors"))
        (tmp / "params.json").write_text(json.dumps(params_json(paths.config), indent=2) + "\n")
        for src in _tokenizer_files(paths.hf_dir):
            shutil.copyfile(src, tmp / src.name)
        if not _tokenizer_files(tmp):
            raise FileNotFoundError(f"{paths.hf_dir}: no mistral-common tokenizer file to copy")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        return out


def _tokenizer_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("tokenizer.model.v*") if p.is_file()) + \
        sorted(p for p in directory.glob("*tekken*.json") if p.is_file())

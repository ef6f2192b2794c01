"""`random-tiny`: a tiny model with RANDOM weights, served by name (`triolm serve --model
random-tiny`) for demos and smoke tests that must not download anything.

It is a qwen2-architecture model (2 layers, hidden size 64) with a real tokenizer —
mistral-common's tekken vocabulary, which ships inside the installed mistral-common
package — and a ChatML template with hermes tool calls. It is generated
deterministically (seed 0) on first use and cached on disk. Its text is gibberish.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import mistral_common
from safetensors.torch import save_file

from triolm.loading.cache_dir import triolm_cache_dir
from triolm.model.config import ModelConfig
from triolm.model.random_init import hf_config_dict, random_weights
from triolm.tokenizers.hf import convert_to_hf_dir

RANDOM_TINY_NAME = "random-tiny"
RANDOM_TINY_CARD = (
    "random-tiny: a tiny qwen2-architecture model with RANDOM weights (seed 0) and a real "
    "tokenizer (mistral-common's tekken vocabulary), for demos and tests. Its output is "
    "gibberish; run `triolm serve` without a model for a real one, or pass a .gguf file or "
    "a Hugging Face model directory.")
_VERSION = 1  # bump when the files written change


def random_tiny_dir() -> Path:
    return triolm_cache_dir() / "models" / f"random-tiny-v{_VERSION}"


def _config(vocab_size: int, bos: int | None, eos: tuple[int, ...]) -> ModelConfig:
    return ModelConfig(architecture="qwen2", vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       rms_norm_eps=1e-6, rope_theta=1e6, attention_bias=True, tie_word_embeddings=True,
                       bos_token_id=bos, eos_token_ids=eos, max_position_embeddings=2048)


def make_random_tiny_model() -> Path:
    """The model directory, written on first use (atomically: a crash leaves no half model)."""
    target = random_tiny_dir()
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".random-tiny-", dir=target.parent))
    try:
        template = resources.files("triolm.prompting").joinpath("templates", "chatml_tools.jinja").read_text("utf-8")
        tekken = Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"
        tok = convert_to_hf_dir(tekken, tmp, chat_template=template)
        config = _config(tok.vocab_size, tok.bos_token_id, tuple(tok.eos_token_ids))
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(config, "Qwen2ForCausalLM", "qwen2"),
                                                    indent=2) + "\n")
        save_file(random_weights(config, seed=0), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

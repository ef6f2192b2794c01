"""Deterministic random-weight models for tests and benchmarks, in both file formats.

`make_test_model` writes one model as a Hugging Face directory (config.json,
safetensors, generation_config.json, tokenizer files + chat template) and as GGUF
files of the same weights, and caches the result on disk: a second call with the
same (arch, size, seed) and an unchanged factory/tokenizer/writer source returns
the cached files at once.

Weights come from triolm.model.random_init (scaled so a forward pass is informative).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors.torch import save_file

from support.tokenizer_files import load_test_tokenizer, write_test_tokenizer
from triolm.formats.gguf_writer import write_gguf
from triolm.model import random_init
from triolm.model.config import FULL, SLIDING, ModelConfig, RopeScaling
from triolm.model.random_init import random_weights
from triolm.tokenizers.gguf_vocab import gguf_metadata_from_tokenizer

#: Bump when the files written for the same inputs change in a way the source hash
#: below would not see (e.g. a dependency's behaviour).
FACTORY_VERSION = 1

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "llama3", "gemma2", "gemma3", "mixtral", "qwen3_moe")
ARCHS += ("phi3", "granite", "smollm3")
SIZES = ("tiny", "smollm-135m")
DEFAULT_GGUF_TYPES = ("F32", "F16", "Q8_0", "Q4_0")

# arch -> (tokenizer kind for write_test_tokenizer, chat template file, HF class, model_type)
_ARCH_SPEC = {
    "llama": ("spm-llama2", "llama2.jinja", "LlamaForCausalLM", "llama"),
    "mistral": ("spm-mistral-v3", None, "MistralForCausalLM", "mistral"),
    "qwen2": ("bpe-tekken", "chatml_tools.jinja", "Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("bpe-tekken", "chatml_tools.jinja", "Qwen3ForCausalLM", "qwen3"),
    "llama3": ("bpe-tekken", "llama3.jinja", "LlamaForCausalLM", "llama"),
    "gemma2": ("spm-llama2", "gemma.jinja", "Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("spm-llama2", "gemma.jinja", "Gemma3ForCausalLM", "gemma3_text"),
    "mixtral": ("spm-llama2", "llama2.jinja", "MixtralForCausalLM", "mixtral"),
    "qwen3_moe": ("bpe-tekken", "chatml_tools.jinja", "Qwen3MoeForCausalLM", "qwen3_moe"),
    "phi3": ("spm-llama2", "phi3.jinja", "Phi3ForCausalLM", "phi3"),
    "granite": ("bpe-tekken", "granite.jinja", "GraniteForCausalLM", "granite"),
    "smollm3": ("bpe-tekken", "smollm3.jinja", "SmolLM3ForCausalLM", "smollm3"),
}


@attrs.frozen
class TestModelPaths:
    """Where one generated model lives. `gguf` maps a file type ("F32", "Q8_0", ...) to
    its file; `hf_sharded_dir` is set when the sharded HF variant was asked for."""

    __test__ = False  # not a pytest test class despite the name

    arch: str
    size: str
    seed: int
    root: Path
    hf_dir: Path
    gguf: dict[str, Path]
    config: ModelConfig
    tokenizer_kind: str
    hf_sharded_dir: Path | None = None

    def gguf_path(self, file_type: str = "F32") -> Path:
        try:
            return self.gguf[file_type]
        except KeyError:
            raise KeyError(f"no {file_type} GGUF built for {self.arch}/{self.size} "
                           f"(built: {', '.join(self.gguf)}); pass gguf_types=") from None


def model_config(arch: str, size: str, vocab_size: int, bos: int | None,
                 eos: tuple[int, ...]) -> ModelConfig:
    """The hyper-parameters of a test model (the tokenizer fixes vocab and special ids)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (known: {', '.join(ARCHS)})")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} (known: {', '.join(SIZES)})")
    common: dict[str, Any] = dict(vocab_size=vocab_size, bos_token_id=bos, eos_token_ids=eos,
                                  max_position_embeddings=2048)
    if size == "smollm-135m":
        if arch not in ("llama",):
            raise ValueError("size 'smollm-135m' is a Llama-architecture model: use arch='llama'")
        return ModelConfig(architecture="llama", hidden_size=576, intermediate_size=1536,
                           num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                           head_dim=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                           tie_word_embeddings=True, **common)
    tiny: dict[str, Any] = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=16, **common)
    if arch == "llama":
        return ModelConfig(architecture="llama", rms_norm_eps=1e-5, rope_theta=10000.0, **tiny)
    if arch == "mistral":
        return ModelConfig(architecture="mistral", rms_norm_eps=1e-5, rope_theta=1e6, **tiny)
    if arch == "qwen2":
        return ModelConfig(architecture="qwen2", rms_norm_eps=1e-6, rope_theta=1e6,
                           attention_bias=True, tie_word_embeddings=True, **tiny)
    if arch == "gemma3":
        # Six layers: five local (window 8, shorter than test prompts) and one global, as
        # in the real pattern; head_dim != hidden/heads as in the real models; the global
        # layers' RoPE stretched by linear scaling as in Gemma 3 4B+.
        tiny.update(num_hidden_layers=6, head_dim=32)
        return ModelConfig(architecture="gemma3", rms_norm_eps=1e-6, rope_theta=1e6,
                           rope_scaling=RopeScaling("linear", 4.0), tie_word_embeddings=True,
                           qk_norm=True, sliding_window=8,
                           layer_types=(SLIDING,) * 5 + (FULL,), rope_local_theta=10000.0,
                           query_pre_attn_scalar=32.0, **tiny)
    if arch == "gemma2":
        # Caps far below the real 50/30 so they bend this model's scores and logits.
        return ModelConfig(architecture="gemma2", rms_norm_eps=1e-6, rope_theta=10000.0,
                           tie_word_embeddings=True, sliding_window=8, layer_types=(SLIDING, FULL),
                           rope_local_theta=10000.0, query_pre_attn_scalar=16.0,
                           attn_logit_softcapping=2.0, final_logit_softcapping=4.0, **tiny)
    if arch in ("mixtral", "qwen3_moe"):
        # Eight experts, three per token (real models: 8/2 and 128/8): every token mixes
        # several experts and each step groups tokens by expert.
        moe: dict[str, Any] = dict(num_experts=8, num_experts_per_tok=3)
        if arch == "mixtral":
            return ModelConfig(architecture="mixtral", rms_norm_eps=1e-5, rope_theta=1e6,
                               moe_intermediate_size=tiny["intermediate_size"], **moe, **tiny)
        tiny["head_dim"] = 32  # != hidden/heads, as in Qwen3-30B-A3B
        return ModelConfig(architecture="qwen3_moe", rms_norm_eps=1e-6, rope_theta=1e6, qk_norm=True,
                           moe_intermediate_size=32, **moe, **tiny)
    if arch in ("phi3", "granite", "smollm3"):
        return _family_config(arch, tiny)
    if arch == "qwen3":
        # head_dim deliberately != hidden/heads, as in the real Qwen3 family.
        tiny["head_dim"] = 32
        return ModelConfig(architecture="qwen3", rms_norm_eps=1e-6, rope_theta=1e6,
                           qk_norm=True, **tiny)
    # Llama 3.2 style: tied embeddings, theta 5e5, a context stretched 8x by llama3
    # scaling (256 -> 2048 here, 8192 -> 131072 in the real model).
    return ModelConfig(architecture="llama", rms_norm_eps=1e-5, rope_theta=500000.0,
                       rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 256),
                       tie_word_embeddings=True, **tiny)


def _family_config(arch: str, tiny: dict[str, Any]) -> ModelConfig:
    if arch == "phi3":
        # Phi-4-mini's shape of features: 3/4 of each head rotated (12 of 16 dims),
        # longrope switching at 64 positions (test prompts run past it), tied output.
        # Factors and attention factor are exact in float32, as GGUF stores them.
        return ModelConfig(
            architecture="phi3", rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
            partial_rotary_factor=0.75,
            rope_scaling=RopeScaling("longrope", factor=4.0, original_max_position_embeddings=64,
                                     short_factor=(1.0, 1.0, 1.25, 1.5, 2.0, 3.0),
                                     long_factor=(1.0, 1.5, 3.0, 6.0, 12.0, 24.0),
                                     attention_factor=1.125),
            **{**tiny, "max_position_embeddings": 256})
    if arch == "granite":
        # Granite 3.x's multipliers; the attention scale deliberately not head_dim^-1/2.
        return ModelConfig(architecture="granite", rms_norm_eps=1e-5, rope_theta=10000.0,
                           tie_word_embeddings=True, embedding_multiplier=12.0,
                           residual_multiplier=0.22, attention_multiplier=0.125,
                           logits_scaling=8.0, **tiny)
    # SmolLM3: four layers so the fourth leaves RoPE out, as every fourth does.
    tiny["num_hidden_layers"] = 4
    return ModelConfig(architecture="smollm3", rms_norm_eps=1e-6, rope_theta=5e6,
                       tie_word_embeddings=True, rope_layers=(True, True, True, False), **tiny)


def hf_config_dict(config: ModelConfig, arch: str) -> dict[str, Any]:
    """config.json content for a test model of `arch`."""
    _, _, cls, model_type = _ARCH_SPEC[arch]
    return random_init.hf_config_dict(config, cls, model_type)




# ----------------------------------------------------------------------- tokenizers


@attrs.frozen
class _TokenizerInfo:
    vocab_size: int
    bos: int | None
    eos: tuple[int, ...]            # what config.json / GGUF say ends generation
    generation_eos: tuple[int, ...]  # every id that ends generation (generation_config)
    gguf_metadata: dict[str, Any]


def chat_template_text(name: str) -> str:
    return resources.files("triolm.prompting").joinpath("templates", name).read_text(encoding="utf-8")


# test tokenizer kind -> the GGUF vocabulary kind llama.cpp knows it as
_GGUF_VOCAB_KIND = {"spm-llama2": "llama", "spm-mistral-v3": "llama", "bpe-tekken": "gpt2"}


def _tokenizer_info(kind: str, template: str | None) -> _TokenizerInfo:
    """Ids and GGUF keys of a test tokenizer. Computed from the converted tokenizer
    alone (not the model directory, whose config files also carry eos ids), so a cache
    that builds a GGUF later gets exactly the keys the first build would have."""
    tok = load_test_tokenizer(kind)
    meta = dict(gguf_metadata_from_tokenizer(tok, _GGUF_VOCAB_KIND[kind]))
    if template:
        meta["tokenizer.chat_template"] = chat_template_text(template)
    eos: tuple[int, ...] = ()
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        if meta.get(key) is not None and int(meta[key]) not in eos:
            eos += (int(meta[key]),)
    eos = eos or tuple(tok.eos_token_ids)
    generation_eos = eos + tuple(i for i in tok.eos_token_ids if i not in eos)
    return _TokenizerInfo(tok.vocab_size, tok.bos_token_id, eos, generation_eos, meta)


# --------------------------------------------------------------------------- files


def _source_digest() -> str:
    """Hash of the code that decides what the files contain, so edits invalidate caches."""
    h = hashlib.sha256(str(FACTORY_VERSION).encode())
    support = Path(__file__).resolve().parent
    src = Path(random_init.__file__).resolve().parents[1]
    for p in (support / "model_factory.py", support / "tokenizer_files.py", src / "model/random_init.py",
              src / "formats/gguf_writer.py", src / "formats/gguf_layout.py", src / "formats/gguf_quants.py",
              src / "formats/moe_layout.py", src / "formats/moe_gguf.py", src / "formats/moe_config.py",
              src / "tokenizers/gguf_vocab.py", src / "tokenizers/convert.py", src / "tokenizers/hf.py",
              src / "prompting/templates", src / "formats/family_gguf.py", src / "formats/phi3.py",
              src / "formats/gemma_gguf.py"):
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:10]


def default_cache_dir() -> Path:
    env = os.environ.get("TRIOLM_TEST_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "triolm" / "test-models"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Process-wide lock so two test runs do not build the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def write_sharded_safetensors(out_dir: Path, tensors: dict[str, torch.Tensor], shards: int = 2) -> None:
    """model-0000i-of-0000n.safetensors + model.safetensors.index.json, as HF writes them."""
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        part = names[i * per:(i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        _save_safetensors(out_dir / fname, {n: tensors[n] for n in part})
        for n in part:
            weight_map[n] = fname
            total += tensors[n].numel() * tensors[n].element_size()
    _write_json(out_dir / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_hf_dir(hf_dir: Path, arch: str, config: ModelConfig, tok: _TokenizerInfo,
                  weights: dict[str, torch.Tensor]) -> None:
    _write_json(hf_dir / "config.json", hf_config_dict(config, arch))
    gen_eos: Any = list(tok.generation_eos) if len(tok.generation_eos) != 1 else tok.generation_eos[0]
    _write_json(hf_dir / "generation_config.json",
                {"bos_token_id": config.bos_token_id, "eos_token_id": gen_eos,
                 "do_sample": False})
    _save_safetensors(hf_dir / "model.safetensors", weights)


def make_test_model(out_dir: str | os.PathLike | None = None, arch: str = "llama", size: str = "tiny",
                    seed: int = 0, gguf_types: tuple[str, ...] | list[str] = DEFAULT_GGUF_TYPES,
                    sharded: bool = False,
                    progress: Callable[[str, int, int], None] | None = None) -> TestModelPaths:
    """Build (or reuse from the cache under out_dir) one test model in both formats.

    arch: llama | mistral | qwen2 | qwen3 | llama3 (llama architecture, tekken BPE
    vocab, llama3 rope scaling) | gemma2 | gemma3. size: tiny | smollm-135m (SmolLM-135M's shapes, for
    benchmarks). gguf_types: GGUF file types to write (see gguf_writer.FILE_TYPES).
    sharded: also write `hf_sharded/` with two safetensors shards and an index.
    progress(stage, done, total) reports long steps (used by scripts/make_test_model.py)."""
    base = Path(out_dir) if out_dir is not None else default_cache_dir()
    kind, template, _, _ = _ARCH_SPEC.get(arch, (None, None, None, None))
    if kind is None:
        raise ValueError(f"unknown arch {arch!r} (known: {', '.join(ARCHS)})")
    model_config(arch, size, 1, None, ())  # refuse bad arch/size before touching the disk
    root = base / f"{arch}-{size}-seed{seed}-{_source_digest()}"
    hf_dir = root / "hf"
    with _locked(base / f".{root.name}.lock"):
        manifest_path = root / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
        weights: dict[str, torch.Tensor] | None = None
        tok: _TokenizerInfo | None = None
        if manifest is None:
            if root.exists():
                shutil.rmtree(root)  # a build that died half-way
            hf_dir.mkdir(parents=True)
            write_test_tokenizer(kind, hf_dir, chat_template_text(template) if template else None)
            tok = _tokenizer_info(kind, template)
            config = model_config(arch, size, tok.vocab_size, tok.bos, tok.eos)
            weights = random_weights(config, seed)
            _write_hf_dir(hf_dir, arch, config, tok, weights)
            manifest = {"gguf": {}, "sharded": False}
            _write_json(manifest_path, manifest)
        else:
            config = _config_from_written(json.loads((hf_dir / "config.json").read_text()), arch, size)

        if sharded and not manifest["sharded"]:
            weights = weights if weights is not None else random_weights(config, seed)
            sdir = root / "hf_sharded"
            if sdir.exists():
                shutil.rmtree(sdir)
            shutil.copytree(hf_dir, sdir, ignore=shutil.ignore_patterns("model.safetensors"))
            write_sharded_safetensors(sdir, weights)
            manifest["sharded"] = True
            _write_json(manifest_path, manifest)
        for ft in gguf_types:
            if ft in manifest["gguf"]:
                continue
            weights = weights if weights is not None else random_weights(config, seed)
            tok = tok if tok is not None else _tokenizer_info(kind, template)
            path = root / f"model-{ft}.gguf"
            cb = (lambda done, total, ft=ft: progress(f"gguf {ft}", done, total)) if progress else None
            write_gguf(path, config, weights, tok.gguf_metadata, ft,
                       name=f"triolm-test-{arch}-{size}", progress=cb)
            manifest["gguf"][ft] = path.name
            _write_json(manifest_path, manifest)
        os.utime(manifest_path)  # last use, for _prune_stale
        _prune_stale(base, root)
        return TestModelPaths(
            arch=arch, size=size, seed=seed, root=root, hf_dir=hf_dir,
            gguf={ft: root / name for ft, name in manifest["gguf"].items()},
            config=config, tokenizer_kind=kind,
            hf_sharded_dir=root / "hf_sharded" if manifest["sharded"] else None)


STALE_AFTER_SECONDS = 15 * 60


def _prune_stale(base: Path, current: Path) -> None:
    """Delete builds of the same (arch, size, seed) made by other source versions and
    unused for 15 minutes (a smollm-135m build is ~1.5 GB; sources change often)."""
    prefix = current.name.rsplit("-", 1)[0] + "-"
    now = time.time()
    for other in base.glob(prefix + "*"):
        if other == current or not other.is_dir() or len(other.name) != len(current.name):
            continue
        manifest = other / "manifest.json"
        try:
            last_use = manifest.stat().st_mtime if manifest.exists() else other.stat().st_mtime
        except OSError:
            continue
        if now - last_use > STALE_AFTER_SECONDS:
            shutil.rmtree(other, ignore_errors=True)
            (base / f".{other.name}.lock").unlink(missing_ok=True)


def _config_from_written(cfg: dict[str, Any], arch: str, size: str) -> ModelConfig:
    """The ModelConfig a cached config.json was written from."""
    eos = cfg["eos_token_id"]
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
    return model_config(arch, size, cfg["vocab_size"], cfg["bos_token_id"], eos_ids)

"""Load what the server serves: weights, tokenizer, chat template, tool parser, limits.

Runs in a worker thread at start-up (it is slow and CPU-bound); reports progress to a
callback so the CLI can draw a progress bar.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import torch

from triolm.errors import InvalidRequestError, ModelLoadError
from triolm.formats.gguf_weights import read_gguf_for_engine
from triolm.formats.hf_config import read_hf_config
from triolm.formats.load_limits import MAX_CHAT_TEMPLATE_BYTES, check_chat_template
from triolm.formats.mistral_native import read_mistral_native
from triolm.formats.safetensors_loader import read_safetensors
from triolm.loading import default_model, random_tiny
from triolm.loading.embedding_spec import EmbeddingSpec, resolve_task, spec_from_gguf_metadata, spec_from_model_dir
from triolm.model.build import Model, build_model
from triolm.model.config import ModelConfig
from triolm.model.linear import PrefillPrecision
from triolm.prompting.grammar import GrammarCompiler
from triolm.prompting.reasoning import ReasoningFormat, reasoning_format_for
from triolm.prompting.template import DEFAULT_CHAT_TEMPLATE, ChatTemplate, builtin_template
from triolm.prompting.template_sandbox import RenderBudget
from triolm.prompting.tool_parsers import model_tool_parser
from triolm.settings import ServerSettings
from triolm.tokenizers.base import Tokenizer
from triolm.tokenizers.gguf_vocab import tokenizer_from_gguf_metadata
from triolm.tokenizers.hf import HFTokenizer
from triolm.tokenizers.mistral_tokenizer import (
    MistralTokenizerAdapter,
    find_mistral_tokenizer_file,
    load_mistral_tokenizer,
    load_mistral_tokenizer_adapter,
)

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]  # (stage description, fraction done 0..1)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@attrs.define
class ServedModel:
    name: str
    path: str
    config: ModelConfig
    model: Model | None  # None while released (POST /release_memory_occupation, tag "weights")
    tokenizer: Tokenizer
    chat_template: object  # triolm.prompting.template.ChatTemplate
    mistral_tokenizer: object | None  # mistral_common MistralTokenizer in mistral mode
    tool_parser: str  # its tool-call format (prompting.tool_parsers.model_tool_parser)
    max_model_len: int
    weights_bytes: int
    card: str = ""
    grammar: object | None = None  # triolm.prompting.grammar.GrammarCompiler for this tokenizer
    reasoning: ReasoningFormat | None = None  # thinking markers split off the answer
    max_token_chars: int = 1 << 30  # characters of the longest token (bounds a prompt's token count)
    embedding: EmbeddingSpec | None = None  # served for embeddings (--task embed), not generation

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids = set(self.tokenizer.eos_token_ids) | set(self.config.eos_token_ids)
        return tuple(sorted(ids))


def _noop(stage: str, fraction: float) -> None:
    pass


def resolve_model(settings: ServerSettings, progress: Progress = _noop) -> tuple[Path, str | None, str]:
    """(path, name unless named after the path, model card) of what `settings.model` names:
    nothing for the default model (downloaded once), `random-tiny`, or a path."""
    if settings.model is None:
        progress(f"default model {default_model.DEFAULT_MODEL_NAME}", 0.0)
        path = default_model.ensure_default_model()
        log.info("serving the default model %s (%s); pass a MODEL to serve another",
                 default_model.DEFAULT_MODEL_NAME, path)
        return path, default_model.DEFAULT_MODEL_NAME, default_model.DEFAULT_MODEL_CARD
    if settings.model == random_tiny.RANDOM_TINY_NAME and not Path(settings.model).exists():
        progress("generating the random-tiny model", 0.0)
        path = random_tiny.make_random_tiny_model()
        log.info("serving random-tiny: RANDOM weights, gibberish output (%s)", path)
        return path, random_tiny.RANDOM_TINY_NAME, random_tiny.RANDOM_TINY_CARD
    return Path(settings.model), None, ""


def load_served_model(settings: ServerSettings, progress: Progress = _noop) -> ServedModel:
    path, builtin_name, card = resolve_model(settings, progress)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    dtype = _DTYPES.get(settings.dtype)
    if dtype is None:
        raise ModelLoadError(f"unsupported dtype {settings.dtype!r} (supported: {', '.join(_DTYPES)})")
    progress("reading weights", 0.1)
    if path.is_file():
        config, tensors, tokenizer, template_source, detected = _load_gguf(path)
    else:
        config, tensors, tokenizer, template_source = _load_directory(path, settings, progress)
        detected = spec_from_model_dir(path)
    embedding = resolve_task(settings.task, detected, config.architecture)
    progress("building the model", 0.7)
    max_len = _max_model_len(settings, config)
    model = build_model(config, tensors, dtype=dtype, max_positions=max_len + 1)
    PrefillPrecision.set(settings.prefill_precision)
    weights_bytes = model.weights_bytes
    del tensors
    progress("tokenizer and chat template", 0.9)
    mistral_tok = _maybe_mistral_tokenizer(path, settings, config)
    if mistral_tok is not None:
        tokenizer = MistralTokenizerAdapter(mistral_tok)
    template_origin = "the model's chat template"
    if settings.chat_template:
        template_path = Path(settings.chat_template)
        if template_path.stat().st_size > MAX_CHAT_TEMPLATE_BYTES:  # before reading it whole
            raise ModelLoadError(f"--chat-template {template_path}: {template_path.stat().st_size} "
                                 f"bytes; the limit is {MAX_CHAT_TEMPLATE_BYTES}")
        template_source = template_path.read_text()
        template_origin = f"--chat-template {settings.chat_template}"
    if not template_source and config.architecture in ("gemma2", "gemma3"):
        template_source = builtin_template("gemma")  # GGUF files of Gemma often carry none
    try:
        template = ChatTemplate(template_source or DEFAULT_CHAT_TEMPLATE,
                                bos_token=getattr(tokenizer, "bos_token", None) or "",
                                eos_token=getattr(tokenizer, "eos_token", None) or "",
                                budget=RenderBudget(settings.template_timeout, settings.template_max_output))
    except InvalidRequestError as exc:
        raise ModelLoadError(f"{path}: {template_origin}: {exc.message}") from None
    tool_parser = model_tool_parser(settings.tool_call_parser, template_source, config.architecture,
                                    mistral_tokenizer=mistral_tok is not None)
    try:
        reasoning = reasoning_format_for(settings.reasoning_parser, template.source)
    except ValueError as exc:  # an unknown name from TRIOLM_REASONING_PARSER
        raise ModelLoadError(str(exc)) from None
    name = settings.served_model_name or builtin_name or (path.stem if path.is_file() else path.name)
    progress("grammar compiler", 0.95)
    try:
        grammar = GrammarCompiler(tokenizer, vocab_size=config.vocab_size)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot build the grammar tokenizer: {exc}") from exc
    progress("ready", 1.0)
    return ServedModel(grammar=grammar, name=name, path=str(path), config=config, model=model, tokenizer=tokenizer,
                       chat_template=template, mistral_tokenizer=mistral_tok,
                       tool_parser=tool_parser, max_model_len=max_len,
                       weights_bytes=weights_bytes, card=card, reasoning=reasoning,
                       max_token_chars=longest_token_chars(tokenizer), embedding=embedding)


def read_model_files(path: Path, settings: ServerSettings, progress: Progress = _noop):
    """(config, tensors, tokenizer, chat template source) of a GGUF file or a model
    directory (Hugging Face or Mistral's native layout)."""
    if path.is_file():
        config, tensors, tokenizer, template, _ = _load_gguf(path)
        return config, tensors, tokenizer, template
    return _load_directory(path, settings, progress)


def torch_dtype(name: str) -> torch.dtype:
    dtype = _DTYPES.get(name)
    if dtype is None:
        raise ModelLoadError(f"unsupported dtype {name!r} (supported: {', '.join(_DTYPES)})")
    return dtype


def longest_token_chars(tokenizer: Tokenizer) -> int:
    """The most characters one token can add to a text (its bytes bound its characters),
    so a text of n characters has at least n / this many tokens."""
    longest = 1
    for token_id in range(tokenizer.vocab_size):
        try:
            longest = max(longest, len(tokenizer.token_bytes(token_id)))
        except IndexError:  # an id the vocabulary leaves unused
            continue
    return longest


def with_decoder_prefix(tensors: dict) -> dict:
    """Embedding checkpoints saved from the bare decoder (Qwen3-Embedding's `Qwen3Model`)
    name their tensors without the `model.` prefix and have no LM head: named as the
    causal-LM layout the model builder reads (the head is then the tied embedding)."""
    if any(name.startswith("model.") for name in tensors):
        return tensors
    return {name if name.startswith("lm_head.") else f"model.{name}": t for name, t in tensors.items()}


def _max_model_len(settings: ServerSettings, config: ModelConfig) -> int:
    trained = config.max_position_embeddings
    if settings.max_model_len is None:
        return min(trained, 8192)
    if settings.max_model_len > trained:
        log.warning("--max-model-len %d is beyond the model's trained context %d: "
                    "quality may degrade past it", settings.max_model_len, trained)
    return settings.max_model_len


def _load_gguf(path: Path):
    gguf, _ = read_gguf_for_engine(path)  # matrices stay in the file's encoding (mapped)
    try:
        tokenizer = tokenizer_from_gguf_metadata(gguf.metadata)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    except Exception as exc:  # a malformed vocabulary must not crash start-up obscurely
        raise ModelLoadError(f"{path}: cannot build the tokenizer from GGUF metadata: {exc}") from exc
    if tokenizer.vocab_size > gguf.config.vocab_size:
        raise ModelLoadError(f"{path}: metadata tokenizer.ggml.tokens has {tokenizer.vocab_size} tokens "
                             f"but the embedding has {gguf.config.vocab_size} rows")
    template = gguf.metadata.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise ModelLoadError(f"{path}: metadata tokenizer.chat_template is not a string")
    check_chat_template(template, f"{path}: metadata tokenizer.chat_template")
    try:
        detected = spec_from_gguf_metadata(gguf.metadata)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    return gguf.config, gguf.tensors, tokenizer, template, detected


def _load_directory(path: Path, settings: ServerSettings, progress: Progress):
    if (path / "params.json").exists() and not (path / "config.json").exists():
        if settings.tokenizer_mode == "hf":
            raise ModelLoadError(f"{path}: a model in Mistral's native layout (params.json) has no Hugging "
                                 "Face tokenizer; use --tokenizer-mode auto or mistral")
        config, tensors = read_mistral_native(path)
        return config, tensors, load_mistral_tokenizer_adapter(path), None
    config = read_hf_config(path)
    tensors = with_decoder_prefix(read_safetensors(path, lambda done, total: progress(
        f"reading safetensors {done}/{total}", 0.1 + 0.5 * done / total)))

    tokenizer = HFTokenizer.from_dir(path)
    check_chat_template(tokenizer.chat_template, f"{path}: chat_template")
    return config, tensors, tokenizer, tokenizer.chat_template


def _maybe_mistral_tokenizer(path: Path, settings: ServerSettings, config: ModelConfig):
    """mistral-common encodes the chat when asked (`--tokenizer-mode mistral`), or in
    `auto` mode for Mistral models (mistral architecture or native params.json layout)
    that ship a mistral-common tokenizer file."""
    if settings.tokenizer_mode == "hf":
        return None
    if settings.tokenizer_mode == "auto" and path.is_dir():
        is_mistral = config.architecture == "mistral" or (path / "params.json").exists()
        if not is_mistral:
            return None
    if path.is_file():
        if settings.tokenizer_mode == "mistral":
            raise ModelLoadError("--tokenizer-mode mistral needs a model directory with a "
                                 "mistral-common tokenizer file (tekken.json, tokenizer.model.v3, …)")
        return None

    found = find_mistral_tokenizer_file(path)
    if found is None:
        if settings.tokenizer_mode == "mistral":
            raise ModelLoadError(f"{path}: --tokenizer-mode mistral but no mistral-common tokenizer "
                                 "file (tekken.json, tokenizer.model.v3, …) in the directory")
        return None
    return load_mistral_tokenizer(path)

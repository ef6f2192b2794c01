"""What the router loads of a model: its tokenizer and chat template, never its weights.

The router renders and tokenizes every prompt itself and sends token ids to the
backends, so a session's nodes hold exactly the ids the engine consumed, whichever
engine runs behind it. The attribute names match `ServedModel`'s, so the project's
prompt rendering (`serving.prompts`) and session preparation take either.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from triolm.errors import InvalidRequestError, ModelLoadError
from triolm.formats.gguf_reader import read_gguf_metadata
from triolm.formats.hf_config import read_hf_config
from triolm.formats.load_limits import check_chat_template
from triolm.loading.served_model import longest_token_chars
from triolm.prompting.reasoning import ReasoningFormat, reasoning_format_for
from triolm.prompting.template import DEFAULT_CHAT_TEMPLATE, ChatTemplate, builtin_template
from triolm.prompting.template_sandbox import RenderBudget
from triolm.prompting.tool_parsers import model_tool_parser
from triolm.tokenizers.base import Tokenizer
from triolm.tokenizers.gguf_vocab import tokenizer_from_gguf_metadata
from triolm.tokenizers.hf import HFTokenizer

_DEFAULT_MAX_MODEL_LEN = 8192  # as `triolm serve`: the model's context, capped


@attrs.define
class PromptFrontend:
    name: str
    path: str
    tokenizer: Tokenizer
    chat_template: ChatTemplate
    tool_parser: str
    reasoning: ReasoningFormat | None
    eos_token_ids: tuple[int, ...]
    max_model_len: int
    vocab_size: int
    max_token_chars: int
    mistral_tokenizer: None = None  # the router renders Jinja templates only


@attrs.frozen
class FrontendOptions:
    served_model_name: str | None = None
    max_model_len: int | None = None
    chat_template: str | None = None  # a jinja file overriding the model's template
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    template_timeout: float = 10.0
    template_max_output: int = 32 * 1024 * 1024


def load_prompt_frontend(path_text: str, options: FrontendOptions) -> PromptFrontend:
    """The tokenizer and chat template of a GGUF file or a Hugging Face directory."""
    path = Path(path_text)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or directory")
    if path.is_file():
        meta = read_gguf_metadata(path)
        try:
            tokenizer = tokenizer_from_gguf_metadata(meta)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
        arch = str(meta.get("general.architecture", ""))
        context = meta.get(f"{arch}.context_length", _DEFAULT_MAX_MODEL_LEN)
        trained = int(context) if isinstance(context, int) else _DEFAULT_MAX_MODEL_LEN
        eos = tuple(tokenizer.eos_token_ids)
        template_source = meta.get("tokenizer.chat_template")
        if template_source is not None and not isinstance(template_source, str):
            raise ModelLoadError(f"{path}: metadata tokenizer.chat_template is not a string")
        vocab = tokenizer.vocab_size
    else:
        config = read_hf_config(path)
        tokenizer = HFTokenizer.from_dir(path)
        arch = config.architecture
        trained = config.max_position_embeddings
        eos = tuple(sorted(set(tokenizer.eos_token_ids) | set(config.eos_token_ids)))
        template_source = tokenizer.chat_template
        vocab = config.vocab_size
    check_chat_template(template_source, f"{path}: chat_template")
    if options.chat_template:
        template_source = Path(options.chat_template).read_text()
        check_chat_template(template_source, f"--chat-template {options.chat_template}")
    if not template_source and arch in ("gemma2", "gemma3"):
        template_source = builtin_template("gemma")
    try:
        template = ChatTemplate(template_source or DEFAULT_CHAT_TEMPLATE,
                                bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "",
                                budget=RenderBudget(options.template_timeout, options.template_max_output))
    except InvalidRequestError as exc:
        raise ModelLoadError(f"{path}: chat template: {exc.message}") from None
    try:
        reasoning = reasoning_format_for(options.reasoning_parser, template.source)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    max_len = options.max_model_len or min(trained, _DEFAULT_MAX_MODEL_LEN)
    return PromptFrontend(
        name=options.served_model_name or (path.stem if path.is_file() else path.name),
        path=str(path), tokenizer=tokenizer, chat_template=template,
        tool_parser=model_tool_parser(options.tool_call_parser, template_source, arch),
        reasoning=reasoning, eos_token_ids=eos, max_model_len=max_len, vocab_size=vocab,
        max_token_chars=longest_token_chars(tokenizer))

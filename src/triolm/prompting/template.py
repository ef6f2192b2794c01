"""Chat templates: Jinja2 rendering with Hugging Face `apply_chat_template` semantics.

Model chat templates are written for transformers, so they are rendered the way it
renders them: a sandboxed, immutable Jinja2 environment with `trim_blocks` and
`lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that keeps
non-ASCII text and key order, `raise_exception(msg)` and `strftime_now(fmt)`, and
the variables `messages`, `tools`, `add_generation_prompt`, `bos_token`,
`eos_token` (plus whatever the caller passes, e.g. `enable_thinking`).

Assistant tool calls whose `function.arguments` is a JSON string (the OpenAI wire
format) are given the parsed object instead, as transformers/vLLM users expect, so
templates can iterate over or `tojson` the arguments.

A template is untrusted code from a model file: it runs in `BoundedSandbox`
(triolm.prompting.template_sandbox), and every render has a `RenderBudget` of time and
output size. Every failure (syntax error, `raise_exception`, an undefined attribute, a
sandbox violation, a budget exceeded) becomes `InvalidRequestError` carrying the
template's message.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes

from triolm.errors import InvalidRequestError
from triolm.prompting.template_sandbox import (
    MAX_TEMPLATE_CHARS,
    BoundedSandbox,
    RenderBudget,
    TemplateBudgetExceeded,
    render_bounded,
)
from triolm.protocol.chat_messages import tool_call_arguments

BUILTIN_TEMPLATES = ("chatml_tools", "llama2", "llama3", "gemma")


def builtin_template(name: str) -> str:
    """The source of a template shipped in triolm/prompting/templates/ (see BUILTIN_TEMPLATES)."""
    if name not in BUILTIN_TEMPLATES:
        raise KeyError(f"no built-in chat template {name!r} (have: {', '.join(BUILTIN_TEMPLATES)})")
    return resources.files("triolm.prompting").joinpath("templates", f"{name}.jinja").read_text(encoding="utf-8")


#: Used for models that ship no chat template: ChatML (<|im_start|>role ... <|im_end|>)
#: with Hermes/Qwen2.5-style tool calling — the same text as chatml_tools.jinja.
DEFAULT_CHAT_TEMPLATE = builtin_template("chatml_tools")


class TemplateRaised(Exception):
    """Raised by the template's own `raise_exception(message)`."""


def _raise_exception(message: Any) -> None:
    raise TemplateRaised(str(message))


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    """transformers' tojson: unlike Jinja's built-in one it does not HTML-escape, does not
    sort keys and keeps non-ASCII characters."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=tuple(separators) if separators is not None else None, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}…{% endgeneration %}` (transformers marks assistant spans with it
    for training masks); rendering just emits the body."""

    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


@lru_cache(maxsize=1)
def _environment() -> BoundedSandbox:
    env = BoundedSandbox(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationBlock])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _with_parsed_arguments(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A deep copy of `messages` where JSON-string tool-call arguments are parsed."""
    out = []
    for m in messages:
        m = copy.deepcopy(dict(m))
        calls = m.get("tool_calls")
        if m.get("role") == "assistant" and isinstance(calls, list):
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    fn["arguments"] = tool_call_arguments(fn["arguments"])  # text that is not JSON stays
        out.append(m)
    return out


#: Code of the errors a render past its budget gets (see RenderBudget).
BUDGET_EXCEEDED = "chat_template_budget_exceeded"


class ChatTemplate:
    """A compiled chat template. Thread-safe: render it from worker threads.

    Compiling is bounded by the source size (MAX_TEMPLATE_CHARS; the sandbox does no
    constant folding), rendering by the `RenderBudget` given to `render`."""

    def __init__(self, source: str, bos_token: str | None = "", eos_token: str | None = "",
                 budget: RenderBudget = RenderBudget()):
        if not isinstance(source, str):
            raise InvalidRequestError("chat template must be a string", param="chat_template")
        if len(source) > MAX_TEMPLATE_CHARS:
            raise InvalidRequestError(f"chat template is {len(source)} characters long, beyond the limit "
                                      f"of {MAX_TEMPLATE_CHARS}", param="chat_template")
        self.source = source
        self.budget = budget
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise InvalidRequestError(f"chat template syntax error (line {exc.lineno}): {exc.message}",
                                      param="chat_template") from exc
        except (RecursionError, MemoryError, SyntaxError) as exc:  # nesting deeper than Python can hold
            raise InvalidRequestError(f"chat template cannot be compiled: {type(exc).__name__}: {exc}",
                                      param="chat_template") from exc

    def render(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None,
               add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt text for `messages` (OpenAI-style dicts) and `tools` (OpenAI tool
        dicts), rendered within the template's budget. `extra` become template variables
        (and may override bos_token/eos_token)."""
        context = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **extra,
            "messages": _with_parsed_arguments(messages),
            "tools": list(tools) if tools else None,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            return render_bounded(self._template, self.budget, context)
        except TemplateBudgetExceeded as exc:
            raise InvalidRequestError(str(exc), param="messages", code=BUDGET_EXCEEDED) from exc
        except RecursionError as exc:
            raise InvalidRequestError("chat template recursed too deeply", param="messages",
                                      code=BUDGET_EXCEEDED) from exc
        except MemoryError as exc:
            raise InvalidRequestError("chat template ran out of its memory budget", param="messages",
                                      code=BUDGET_EXCEEDED) from exc
        except OverflowError as exc:  # e.g. range() beyond the sandbox's MAX_RANGE
            raise InvalidRequestError(f"chat template error: {exc}", param="messages",
                                      code=BUDGET_EXCEEDED) from exc
        except TemplateRaised as exc:
            raise InvalidRequestError(str(exc), param="messages") from exc
        except jinja2.TemplateError as exc:  # UndefinedError, SecurityError, …
            raise InvalidRequestError(f"chat template error: {exc}", param="messages") from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            raise InvalidRequestError(f"chat template error: {type(exc).__name__}: {exc}",
                                      param="messages") from exc

    def __repr__(self) -> str:
        return f"ChatTemplate({len(self.source)} chars, bos={self.bos_token!r}, eos={self.eos_token!r})"

"""`GrammarCompiler`: OpenAI request fields -> cached compiled grammars for one tokenizer.

Compiling is the slow part (tens of ms for a large schema on a 131k vocabulary), and
agents send the same tools/schema on every turn, so results are kept in an LRU keyed
by the grammar text and its limits.  A new grammar is compiled first in the sandbox
child under a wall-clock and memory budget (sandbox.py), then here under the same
llguidance limits; a grammar past a limit is an InvalidRequestError naming it, raised
before any token is generated.  Call from a worker thread: it is CPU work and blocking
waits, and llguidance releases the GIL while it builds.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import llguidance

from triolm.errors import InvalidRequestError
from triolm.prompting.tool_parsers import ToolCallFormat, get_tool_call_format
from triolm.tokenizers.base import Tokenizer

from .build import LarkBuilder, json_rule, lark_string, parse_tools, tool_calls_rule, tool_choice_mode
from .compile_worker import probe
from .limits import GrammarLimits
from .llg import CompiledGrammar, llg_tokenizer, sandbox_table
from .sandbox import CompileSandbox, GrammarLimitError
from .user_grammar import structural_tag_lark, user_grammar_lark

log = logging.getLogger(__name__)
DEFAULT_LIMITS = GrammarLimits()

# llguidance error text -> the limit it ran into (a GrammarLimits field where one is)
_LIMIT_HINTS = (
    ("max_items_in_row", ("items in row", "current row has")),
    ("step_max_items", ("too many items",)),
    ("max_grammar_size", ("grammar size", "too many symbols", "grammar is too large")),
    ("max_lexer_states", ("lexer states", "too many states")),
    ("initial_lexer_fuel", ("initial lexer configuration",)),
    ("step_lexer_fuel", ("fuel", "too many expressions", "lexer too complex")),
    ("regex emptiness proof budget (fixed in llguidance)", ("unable to determine if regex is empty",)),
)


def _error_text(message: str) -> str:
    """llguidance's first line, without its position prefix."""
    line = message.strip().splitlines()[0] if message.strip() else "invalid grammar"
    for prefix in ("failed to compile JSON schema: ",):
        if prefix in line:
            line = line.split(prefix, 1)[1]
    if line.startswith("at ") and ": " in line:
        line = line.split(": ", 1)[1]
    return line


def limit_hit(message: str) -> str | None:
    """The GrammarLimits field an llguidance error is about, or None (not a limit)."""
    low = message.lower()
    for name, needles in _LIMIT_HINTS:
        if any(n in low for n in needles):
            return name
    return None


def grammar_error(message: str, param: str | None) -> InvalidRequestError:
    """The request error for an llguidance error: a limit is named as such."""
    text = _error_text(message)
    limit = limit_hit(message)
    if limit is not None:
        return GrammarLimitError(f"{param or 'grammar'} is too complex: {text} (limit: {limit})",
                                 param=param, code="grammar_too_complex")
    return InvalidRequestError(f"invalid {param or 'grammar'}: {text}", param=param)


class GrammarCompiler:
    """Builds and caches grammars for `tokenizer`.

    `vocab_size`: the model's logits width when it exceeds the tokenizer's (padded
    embeddings); masks then cover it and the padding ids are never allowed.
    `limits`: the default GrammarLimits (a request may pass its server's own).
    """

    def __init__(self, tokenizer: Tokenizer, *, vocab_size: int | None = None, cache_size: int = 256,
                 limits: GrammarLimits = DEFAULT_LIMITS):
        self.tokenizer = tokenizer
        self.vocab_size = max(vocab_size or 0, tokenizer.vocab_size)
        self.limits = limits
        self._llg = llg_tokenizer(tokenizer, self.vocab_size)
        self._eos = list(tokenizer.eos_token_ids)
        self._cache: collections.OrderedDict[tuple, CompiledGrammar] = collections.OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._sandbox = CompileSandbox(sandbox_table(tokenizer, self.vocab_size))
        self._sandbox.start(limits.compile_memory)
        self.hits = 0
        self.misses = 0

    def close(self) -> None:
        """Stop the sandbox child (it also ends with the process)."""
        self._sandbox.close()

    # -- generic ----------------------------------------------------------------------
    def compile_lark(self, lark: str, *, param: str | None = None,
                     limits: GrammarLimits | None = None) -> CompiledGrammar:
        """Compile (or fetch from the cache) a grammar in llguidance's Lark dialect;
        an invalid grammar raises InvalidRequestError(param=param), one past a limit
        GrammarLimitError naming the limit."""
        limits = limits or self.limits
        key = (lark, limits)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                self.hits += 1
                return hit
        self.misses += 1
        checked = self._check(lark, limits, param)
        if checked.error:
            raise grammar_error(checked.error, param)
        for w in checked.warnings:
            log.info("grammar warning (%s): %s", param or "grammar", _error_text(w))
        matcher = llguidance.LLMatcher(self._llg, lark, log_level=0, limits=limits.parser_limits())
        error = probe(matcher, self.vocab_size, self._eos)
        if error:  # pragma: no cover - the sandbox ran the same compile and probe
            raise grammar_error(error, param)
        compiled = CompiledGrammar(matcher, self.vocab_size, lark)
        if self._cache_size > 0:
            with self._lock:
                self._cache[key] = compiled
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return compiled

    def _check(self, lark: str, limits: GrammarLimits, param: str | None):
        return self._sandbox.check(lark, limits, param=param)

    def _builder(self) -> LarkBuilder:
        return LarkBuilder(self._special_id)

    def _special_id(self, text: str) -> int | None:
        tid = self.tokenizer.token_to_id(text)
        return tid if tid is not None and tid in self.tokenizer.special_token_ids else None

    # -- structured output -------------------------------------------------------------
    def _answer_rule(self, b: LarkBuilder, response_format=None, guided_choice=None, guided_regex=None,
                     guided_json=None) -> tuple[str, str] | None:
        """(rule, param) for the non-tool answer constraint, or None."""
        given = [p for p, v in (("response_format", response_format), ("guided_choice", guided_choice),
                                ("guided_regex", guided_regex), ("guided_json", guided_json)) if v is not None]
        if response_format is not None and _format_type(response_format) == "text":
            given.remove("response_format")
            response_format = None
        if len(given) > 1:
            raise InvalidRequestError(f"use only one of {', '.join(given)}", param=given[1])
        if response_format is not None:
            kind = _format_type(response_format)
            if kind == "json_object":
                return b.add("answer", json_rule({"type": "object"}, lenient=False)), "response_format"
            if kind == "json_schema":
                spec = response_format.get("json_schema")
                if not isinstance(spec, Mapping):
                    raise InvalidRequestError("response_format.json_schema must be an object", param="response_format")
                schema = spec["schema"] if "schema" in spec else {"type": "object"}
                if not (schema is True or isinstance(schema, Mapping)):
                    raise InvalidRequestError("response_format.json_schema.schema must be a JSON schema object",
                                              param="response_format")
                strict = bool(spec.get("strict", False))
                return b.add("answer", json_rule(dict(schema) if schema is not True else True, lenient=not strict)), \
                    "response_format"
            raise InvalidRequestError(
                f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                param="response_format")
        if guided_json is not None:
            if isinstance(guided_json, str):
                try:
                    guided_json = json.loads(guided_json)
                except ValueError as exc:
                    raise InvalidRequestError(f"guided_json is not JSON: {exc}", param="guided_json") from None
            if not (guided_json is True or isinstance(guided_json, Mapping)):
                raise InvalidRequestError("guided_json must be a JSON schema object", param="guided_json")
            return b.add("answer", json_rule(guided_json if guided_json is True else dict(guided_json),
                                             lenient=True)), "guided_json"
        if guided_choice is not None:
            if (not isinstance(guided_choice, (list, tuple)) or not guided_choice
                    or not all(isinstance(c, str) and c for c in guided_choice)):
                raise InvalidRequestError("guided_choice must be a non-empty list of non-empty strings",
                                          param="guided_choice")
            # one terminal (a trie in the lexer), not one parser alternative per choice:
            # thousands of alternatives would exceed the parser's items per row
            terminal = b.add("CHOICE", " | ".join(lark_string(c) for c in guided_choice))
            return b.add("answer", terminal), "guided_choice"
        if guided_regex is not None:
            if not isinstance(guided_regex, str) or not guided_regex:
                raise InvalidRequestError("guided_regex must be a non-empty string", param="guided_regex")
            return b.add("answer", "/" + llguidance.regex_to_lark(guided_regex) + "/"), "guided_regex"
        return None

    def json_object(self) -> CompiledGrammar:
        """Any JSON object (response_format json_object)."""
        return self.from_request(response_format={"type": "json_object"})

    def json_schema(self, schema: Mapping[str, Any] | bool, *, strict: bool = True) -> CompiledGrammar:
        return self.from_request(response_format={"type": "json_schema",
                                                  "json_schema": {"name": "output", "schema": schema,
                                                                  "strict": strict}})

    def choice(self, choices: Sequence[str]) -> CompiledGrammar:
        return self.from_request(guided_choice=list(choices))

    def regex(self, pattern: str) -> CompiledGrammar:
        return self.from_request(guided_regex=pattern)

    def tool_calls(self, tools: Sequence[Mapping[str, Any]], tool_choice: Any, tool_parser: str | ToolCallFormat,
                   *, parallel_tool_calls: bool = True) -> CompiledGrammar | None:
        """The grammar forcing `tool_choice` ('required' or a named function) in the
        parser's native markup; None for 'auto'/'none' (nothing to force)."""
        return self.from_request(tools=tools, tool_choice=tool_choice, tool_parser=tool_parser,
                                 parallel_tool_calls=parallel_tool_calls)

    # -- the request ---------------------------------------------------------------------
    def from_request(
        self,
        *,
        response_format: Mapping[str, Any] | None = None,
        guided_choice: Sequence[str] | None = None,
        guided_regex: str | None = None,
        guided_json: Any = None,
        grammar: str | None = None,
        structural_tag: Any = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        tool_parser: str | ToolCallFormat | None = None,
        parallel_tool_calls: bool = True,
        limits: GrammarLimits | None = None,
        param: str | None = None,
    ) -> CompiledGrammar | None:
        """The constraint for a chat/completions request, or None when unconstrained.

        - tool_choice 'required' / named (needs `tools` and a `tool_parser`): only tool
          calls in the parser's markup; response_format etc. do not apply to such a turn.
        - an answer constraint (response_format json_object/json_schema, guided_*) with
          tool_choice 'auto' and a tool parser: the reply is either native tool calls or
          an answer matching the constraint; with 'none' (or no tools) only the answer.
        - a user `grammar` (Lark or GBNF) or `structural_tag` is a whole grammar of its
          own: it cannot be joined with tool calls.
        `param`: the request field the answer constraint came from, named in errors
        (default: the argument's own name).
        """
        specs = parse_tools(tools) if tools is not None else None
        mode, named = tool_choice_mode(tool_choice, specs)
        fmt = _format(tool_parser) if tool_parser is not None else None
        b = self._builder()
        if mode in ("required", "named"):
            if fmt is None:
                raise InvalidRequestError(
                    "this model has no known tool-call format, so tool_choice 'required' or a named "
                    "function cannot be enforced", param="tool_choice")
            rule = tool_calls_rule(b, fmt, specs, only=named, parallel=parallel_tool_calls)
            try:
                return self.compile_lark(b.text(rule), param="tools", limits=limits)
            except GrammarLimitError:
                raise
            except InvalidRequestError:
                self._explain_tools(specs, limits)
                raise
        if grammar is not None or structural_tag is not None:
            param = param or ("grammar" if grammar is not None else "structural_tag")
            others = [response_format, guided_choice, guided_regex, guided_json]
            if (grammar is not None and structural_tag is not None) or any(v is not None for v in others):
                raise InvalidRequestError("use only one structured-output constraint", param=param)
            if mode == "auto" and fmt is not None and specs:
                raise InvalidRequestError("a grammar cannot be combined with tools (tool_choice 'auto'); "
                                          "use tool_choice 'none' or leave tools out", param=param)
            text = (user_grammar_lark(grammar, param) if grammar is not None
                    else structural_tag_lark(structural_tag, param))
            return self.compile_lark(text, param=param, limits=limits)
        try:
            answer = self._answer_rule(b, response_format, guided_choice, guided_regex, guided_json)
        except InvalidRequestError as exc:
            if param is not None:
                exc.param = param
            raise
        if answer is None:
            return None
        rule, own_param = answer
        param = param or own_param
        if mode == "auto" and fmt is not None and specs:
            calls = tool_calls_rule(b, fmt, specs, parallel=parallel_tool_calls)
            try:
                return self.compile_lark(b.text(f"{rule} | {calls}"), param=param, limits=limits)
            except GrammarLimitError:
                raise
            except InvalidRequestError:
                self._explain_tools(specs, limits)
                raise
        return self.compile_lark(b.text(rule), param=param, limits=limits)

    def _explain_tools(self, specs, limits: GrammarLimits | None) -> None:
        """Raise an error naming the first tool whose parameters do not compile (each
        checked in the sandbox: a tool schema is as untrusted as the whole grammar)."""
        for i, t in enumerate(specs):
            text = f"start: {json_rule(t.parameters, lenient=not t.strict)}\n"
            error = self._check(text, limits or self.limits, "tools").error
            if error:
                raise InvalidRequestError(
                    f"tools[{i}] ({t.name}): invalid parameters schema: {_error_text(error)}", param="tools")


def _format_type(response_format: Any) -> str:
    if not isinstance(response_format, Mapping) or not isinstance(response_format.get("type"), str):
        raise InvalidRequestError("response_format must be an object with a 'type'", param="response_format")
    return response_format["type"]


def _format(tool_parser: str | ToolCallFormat) -> ToolCallFormat:
    if isinstance(tool_parser, ToolCallFormat):
        return tool_parser
    try:
        return get_tool_call_format(tool_parser)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="tools") from None

"""The one request resolver: a checked request body and the served model's numbers become
a `GenerationPlan` — every decision about what to generate, made here, once — or a
`RequestError` (a 400 naming the field).

    body = parse_request(ChatCompletionRequest, data)   # shape, ranges, combinations
    plan = resolve_chat(body, model)                     # the model's limits, the decisions
    # the route renders plan.prompt, then per generation i:
    max_tokens = plan.max_tokens_for(len(prompt_ids))    # the prompt-length check
    params = plan.sampling_params(i, max_tokens, compiled_constraint)

The Responses and Messages APIs translate their bodies into a chat body and resolve it
here too; the session routes resolve with their session's tool parser. What is left to
the routes is work that needs the event loop or a worker: rendering and tokenizing the
prompt, compiling `plan.constraint`, running the generations, shaping the reply.
"""

from __future__ import annotations

from typing import Any

import attrs

from triolm.engine.sampling_params import SamplingParams
from triolm.prompting.tool_parsers import GENERIC_TOOL_PARSER, reply_tool_parser
from triolm.protocol.chat_messages import content_text
from triolm.protocol.errors import RequestError, bad_request
from triolm.protocol.sampling import check_context, sampling_params, stop_strings
from triolm.protocol.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from triolm.protocol.validation import ModelInfo, check_against_model, check_token_ids, requested_max_tokens

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


# -- where the prompt comes from -----------------------------------------------------------
@attrs.frozen
class ChatMessages:
    """A chat to render with the model's template (or mistral-common). `messages` are
    normalized (protocol.chat_messages)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    add_generation_prompt: bool
    continue_final_message: bool
    template_variables: dict[str, Any] | None
    add_special_tokens: bool  # on top of what the template writes


@attrs.frozen
class PromptTokenIds:
    """A chat prompt given as token ids (`prompt_token_ids`): used as they are."""

    token_ids: list[int]


@attrs.frozen
class CompletionPrompts:
    """The prompts of a text completion: each a text to tokenize or token ids."""

    prompts: list[str | list[int]]
    add_special_tokens: bool


PromptSource = ChatMessages | PromptTokenIds | CompletionPrompts


# -- the output constraint -----------------------------------------------------------------
@attrs.frozen
class ConstraintSpec:
    """What the grammar compiler is asked for (the route compiles it off the loop).

    `answer`: the compiler's arguments for the request's one structured-output field
    (json schema, regex, choice, grammar…), `answer["param"]` naming the field it came
    from; `tools`/`tool_choice`/`tool_parser`: tool calls forced in the model's own
    markup; `generic_tools`: the reply is the generic JSON tool format (a template with no
    tool support)."""

    answer: dict[str, Any] = attrs.field(factory=dict)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    tool_parser: str | None = None
    parallel_tool_calls: bool = True
    generic_tools: bool = False


# -- the plan ------------------------------------------------------------------------------
@attrs.frozen
class GenerationPlan:
    """Everything decided about a generating request before its prompt is rendered.

    `request` is the checked body, kept for the flags the reply's shape reads as given
    (return_token_ids, include_reasoning, …); every decision below is the plan's."""

    request: ChatCompletionRequest | CompletionRequest
    prompt: PromptSource
    n: int
    max_tokens: int | None  # asked for; None: what the context leaves after the prompt
    max_model_len: int
    prompt_param: str  # the field a prompt-length error names
    sampling: SamplingParams  # max_tokens, the seed's offset and the constraint are per generation
    prompt_logprobs_once: bool  # chat: the first generation reports the prompt's logprobs; completions: each
    stops: tuple[str, ...]
    include_stop_str: bool
    skip_special_tokens: bool
    prompt_logprobs: int | None
    stream: bool
    include_usage: bool
    tool_parser: str | None  # parse tool calls out of the reply with this parser
    tool_names: list[str] | None
    constraint: ConstraintSpec | None
    echo: bool
    echo_only: bool  # completions: echo with max_tokens 0, the prompt alone
    echo_text: str  # chat: the text the reply continues (vLLM's echo)
    request_id: str | None  # the client's (vLLM's request_id)
    truncate_prompt_tokens: int | None
    truncation_side: str | None

    def truncated(self, token_ids: list[int]) -> list[int]:
        """vLLM's truncate_prompt_tokens: keep the last N tokens (the first N with
        truncation_side "right"); -1 is the model's context."""
        keep = self.truncate_prompt_tokens
        if keep is None:
            return token_ids
        if keep == -1:
            keep = self.max_model_len
        if len(token_ids) <= keep:
            return token_ids
        return token_ids[:keep] if self.truncation_side == "right" else token_ids[-keep:]

    def max_tokens_for(self, num_prompt_tokens: int) -> int:
        """The tokens a generation may add to a prompt this long; a 400 when the prompt
        (plus max_tokens, or plus min_tokens) does not fit the context."""
        wanted = 1 if self.echo_only else self.max_tokens  # echo alone: the prefill must sample one
        return check_context(num_prompt_tokens, wanted, self.max_model_len, prompt_param=self.prompt_param,
                             min_tokens=self.sampling.min_tokens)

    def sampling_params(self, index: int, max_tokens: int, constraint: Any = None) -> SamplingParams:
        """The engine's parameters of generation `index` (0 ≤ index < n for each prompt):
        seeds differ per generation so n samples differ, and are reproducible."""
        seed = None if self.sampling.seed is None else self.sampling.seed + index
        prompt_logprobs = self.prompt_logprobs if index == 0 or not self.prompt_logprobs_once else None
        return attrs.evolve(self.sampling, max_tokens=max_tokens, seed=seed, constraint=constraint,
                            prompt_logprobs=prompt_logprobs)


def resolve_chat(body: ChatCompletionRequest, model: ModelInfo, *,
                 session_tool_parser: str | None = None) -> GenerationPlan:
    """The plan of a chat request. `session_tool_parser`: a session's parser, which reads
    tool calls out of its replies instead of the model's (the session routes supply the
    prompt themselves, so truncating it is refused)."""
    check_against_model(body, model)
    in_session = session_tool_parser is not None
    if in_session and body.truncate_prompt_tokens is not None:
        raise bad_request("truncate_prompt_tokens cannot be used here: the prompt is the session's",
                          param="truncate_prompt_tokens")
    prompt: PromptSource
    if body.prompt_token_ids is not None:
        check_token_ids(body.prompt_token_ids, model.vocab_size, "prompt_token_ids")
        prompt = PromptTokenIds(list(body.prompt_token_ids))
    else:
        prompt = chat_messages(body)
        if model.renders_tokens and prompt.add_special_tokens:
            raise bad_request("add_special_tokens is not supported with mistral-common's tokenizer "
                              "(it writes the special tokens itself)", param="add_special_tokens")
    tool_parser = reply_tool_parser(session_tool_parser or model.tool_parser, body.tools, body.tool_choice)
    sampling = sampling_params(body)
    return GenerationPlan(
        request=body, prompt=prompt, n=body.n, max_tokens=requested_max_tokens(body),
        max_model_len=model.max_model_len, prompt_param="messages", sampling=sampling,
        prompt_logprobs_once=True, stops=tuple(stop_strings(body)),
        include_stop_str=body.include_stop_str_in_output,
        # tool and thinking markup may be special tokens ([TOOL_CALLS], [THINK])
        skip_special_tokens=body.skip_special_tokens and tool_parser is None and not model.reasoning,
        prompt_logprobs=body.prompt_logprobs,
        stream=body.stream, include_usage=_include_usage(body), tool_parser=tool_parser,
        tool_names=[t.get("function", {}).get("name") for t in (body.tools or [])] or None,
        constraint=chat_constraint(body, model), echo=body.echo, echo_only=False, echo_text=_echoed_text(body),
        request_id=body.request_id, truncate_prompt_tokens=body.truncate_prompt_tokens,
        truncation_side=body.truncation_side)


def resolve_completion(body: CompletionRequest, model: ModelInfo) -> GenerationPlan:
    """The plan of a text completion request."""
    check_against_model(body, model)
    if body.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    max_tokens = requested_max_tokens(body)
    # echo + logprobs gives the prompt's log-probabilities too (as vLLM does)
    prompt_logprobs = body.prompt_logprobs
    if prompt_logprobs is None and body.echo and body.logprobs is not None:
        prompt_logprobs = body.logprobs
    answer = answer_constraint(body)
    return GenerationPlan(
        request=body, prompt=CompletionPrompts(completion_prompts(body.prompt, model.vocab_size),
                                               body.add_special_tokens),
        n=body.n, max_tokens=COMPLETION_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        max_model_len=model.max_model_len, prompt_param="prompt", sampling=sampling_params(body),
        prompt_logprobs_once=False, stops=tuple(stop_strings(body)),
        include_stop_str=body.include_stop_str_in_output, skip_special_tokens=body.skip_special_tokens,
        prompt_logprobs=prompt_logprobs, stream=body.stream,
        include_usage=_include_usage(body), tool_parser=None, tool_names=None,
        constraint=ConstraintSpec(answer=answer) if answer else None, echo=body.echo,
        # echo with max_tokens 0 (vLLM; scoring harnesses send it): the prompt alone
        echo_only=body.echo and max_tokens == 0, echo_text="", request_id=body.request_id,
        truncate_prompt_tokens=body.truncate_prompt_tokens, truncation_side=body.truncation_side)


def chat_messages(body: ChatCompletionRequest) -> ChatMessages:
    """The chat a request gives to render (its `messages`, normalized by the schema)."""
    if body.messages is None:
        raise bad_request("'messages' is required", param="messages")
    return ChatMessages(body.messages, body.tools, body.add_generation_prompt, body.continue_final_message,
                        body.template_variables, body.add_special_tokens)


def _include_usage(body: SamplingFields) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def completion_prompts(prompt: Any, vocab_size: int) -> list[str | list[int]]:
    """A completion's `prompt` (a string, strings, token ids or lists of token ids) as
    one entry per prompt; token ids are checked here, text once it is tokenized."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if prompt and all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    elif prompt and all(isinstance(p, list) for p in prompt):
        prompts = [list(p) for p in prompt]
    else:
        raise bad_request("prompt must be a string, a list of strings, a list of token ids "
                          "or a list of lists of token ids, and not empty", param="prompt")
    for ids in prompts:
        if not ids:
            raise bad_request("prompt must not be empty", param="prompt")
        check_token_ids(ids, vocab_size, "prompt")
    return list(prompts)


def _echoed_text(body: ChatCompletionRequest) -> str:
    """vLLM's chat `echo`: the last message's text, when the reply continues its role
    (the reply's role is the last message's without a generation prompt)."""
    if not body.echo or body.messages is None:
        return ""
    last = body.messages[-1]
    role = "assistant" if body.add_generation_prompt else last.get("role")
    if last.get("role") != role:
        return ""
    return content_text(last.get("content"))


# -- structured output ---------------------------------------------------------------------
# structured_outputs' fields -> the compiler's arguments
_STRUCTURED_OUTPUTS = (("json_", "guided_json"), ("regex", "guided_regex"), ("choice", "guided_choice"),
                       ("grammar", "grammar"), ("structural_tag", "structural_tag"))


def answer_constraint(body: SamplingFields) -> dict[str, Any]:
    """The compiler's arguments for the one output constraint a request gives — by
    vLLM's `structured_outputs`, its older `guided_*` names, llama.cpp's `grammar` or
    OpenAI's `response_format` — with `param` naming the field it came from; {} for
    none. Empty values (`{}`, `""`, `[]`) are constraints the compiler refuses with a
    400 naming the field, never silently ignored."""
    given: list[tuple[str, str, object]] = []  # (request field, compiler argument, value)
    rf = body.response_format
    if rf is not None and rf.get("type") == "structural_tag":
        given.append(("response_format", "structural_tag", rf))
    elif rf is not None and rf.get("type") != "text":
        given.append(("response_format", "response_format", rf))
    for field in ("guided_json", "guided_regex", "guided_choice"):
        if getattr(body, field) is not None:
            given.append((field, field, getattr(body, field)))
    for field in ("guided_grammar", "grammar"):
        if getattr(body, field) is not None:
            given.append((field, "grammar", getattr(body, field)))
    so = body.structured_outputs
    if so is not None:
        given += [("structured_outputs", arg, getattr(so, attr)) for attr, arg in _STRUCTURED_OUTPUTS
                  if getattr(so, attr) is not None]
        if so.json_object:
            given.append(("structured_outputs", "response_format", {"type": "json_object"}))
    if not given:
        return {}
    if len(given) > 1:
        named = [f"{field}" + (f".{arg}" if field == "structured_outputs" else "") for field, arg, _ in given]
        raise bad_request(f"give one structured-output constraint, not {' and '.join(named)}",
                          param=given[1][0])
    field, arg, value = given[0]
    return {arg: value, "param": field}


def chat_constraint(body: ChatCompletionRequest, model: ModelInfo) -> ConstraintSpec | None:
    """The constraint of a chat reply: the generic tool format when the model's template
    has no tool support, else forced tool calls and/or the answer's structured output."""
    answer = answer_constraint(body)
    parallel = body.parallel_tool_calls is not False
    if body.tools and model.tool_parser == GENERIC_TOOL_PARSER:
        if answer:
            raise RequestError("response_format, structured_outputs, guided_* and grammar cannot be combined "
                               "with tools on this model: its chat template has no tool-call format, so replies "
                               "use the generic JSON tool format (docs/tool-calling.md)", param="tools")
        return ConstraintSpec(tools=body.tools, tool_choice=body.tool_choice, parallel_tool_calls=parallel,
                              generic_tools=True)
    forced_tools = bool(body.tools) and (body.tool_choice == "required" or isinstance(body.tool_choice, dict))
    if not forced_tools and not answer:
        return None
    tools = body.tools if body.tool_choice != "none" else None
    return ConstraintSpec(answer=answer, tools=tools, tool_choice=body.tool_choice if tools else None,
                          tool_parser=model.tool_parser if tools else None, parallel_tool_calls=parallel)

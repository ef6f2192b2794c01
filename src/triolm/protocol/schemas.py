"""Request bodies of the OpenAI routes (with vLLM's extensions), validated by pydantic.

A validation failure becomes a 400 whose `param` names the offending field.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from triolm.protocol.chat_messages import normalize_messages
from triolm.protocol.errors import RequestError
from triolm.protocol.request_fields import refuse_unsupported

# What the chat template renderer itself binds (triolm.prompting.template): a request's
# chat_template_kwargs may add variables, never replace these.
RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt", "bos_token",
                                         "eos_token", "raise_exception", "strftime_now"})


def check_tool_definitions(tools: list[dict] | None) -> None:
    for i, tool in enumerate(tools or ()):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise RequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", "tools")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RequestError(f"tools[{i}].function.name must be a non-empty string", "tools")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise RequestError(f"tools[{i}].function.parameters must be a JSON schema object", "tools")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    # OpenAI pads chunks against length side channels; without it the stream is the same
    include_obfuscation: bool | None = None
    continuous_usage_stats: bool = False

    @field_validator("continuous_usage_stats")
    @classmethod
    def _continuous(cls, v):
        if v:
            raise ValueError("continuous_usage_stats is not supported (use include_usage)")
        return v


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs`: one constraint (json, regex, choice, grammar,
    json_object or structural_tag) and options."""

    model_config = ConfigDict(extra="forbid")
    json_: dict[str, Any] | str | bool | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | dict[str, Any] | None = None
    # inert: JSON is always written without free whitespace; there is one backend
    disable_any_whitespace: bool = False
    disable_fallback: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None

    @field_validator("disable_additional_properties")
    @classmethod
    def _no_additional(cls, v):
        if v:
            raise ValueError("disable_additional_properties is not supported: set "
                             "additionalProperties: false in the schema")
        return v

    @field_validator("whitespace_pattern")
    @classmethod
    def _no_whitespace_pattern(cls, v):
        if v is not None:
            raise ValueError("whitespace_pattern is not supported: JSON is written with json.dumps' spacing")
        return v


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions. Unknown fields are refused
    (`request_fields` says which known ones are, and why)."""

    # NaN/Infinity (which Python's JSON accepts) would reach the sampler as NaN logits.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = None
    n: int = 1
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    # bounded so logits / penalty cannot overflow float32 into inf (then NaN probabilities)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=100.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(default=None, ge=-(1 << 63), lt=(1 << 64) - 64)  # torch's seed range
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    allowed_token_ids: list[int] | None = Field(default=None, min_length=1)
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)
    truncation_side: Literal["left", "right"] | None = None
    return_tokens_as_token_ids: bool = False
    return_token_ids: bool = False
    # -1 (vLLM: the whole vocabulary per prompt token) is refused: unbounded response size
    prompt_logprobs: int | None = Field(default=None, ge=0, le=20)
    request_id: str | None = Field(default=None, min_length=1, max_length=256)
    cache_salt: str | None = Field(default=None, min_length=1, max_length=1024)
    response_format: dict[str, Any] | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_choice: list[str] | None = None
    guided_regex: str | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_grammar: str | None = None
    grammar: str | None = None  # llama.cpp's server: a GBNF (or Lark) grammar
    # Accepted and ignored: they change nothing in what is generated or returned
    # (docs/openai-compat.md lists them).
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    session_id: str | None = None
    stream_interval: int | None = Field(default=None, ge=1)
    spaces_between_special_tokens: bool = True
    guided_decoding_backend: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v):
        if v is not None:
            for key, bias in v.items():
                if not -100.0 <= bias <= 100.0:
                    raise ValueError(f"logit_bias value for {key} must be within [-100, 100]")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        return v

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _truncate(cls, v):
        if v == 0:
            raise ValueError("must be at least 1 (or -1: the model's context)")
        return v


class ChatCompletionRequest(SamplingFields):
    messages: list[dict[str, Any]] | None = None
    # The prompt as token ids, instead of messages (no template is rendered): an RL
    # client continues a rollout with exactly the ids it holds.
    prompt_token_ids: list[int] | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    # the template's own variables, given as fields (vLLM passes them the same way)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    documents: list[dict[str, str]] | None = None
    add_special_tokens: bool = False  # on top of what the template writes (vLLM's default)
    echo: bool = False  # prepend the last message when the reply continues it (vLLM)
    include_reasoning: bool = True
    # inert: a latency hint (predicted output) that never changes the output
    prediction: dict[str, Any] | None = None

    def check_one_prompt(self) -> None:
        """Exactly one of messages and prompt_token_ids (a 400 naming the field)."""
        if self.messages is None and self.prompt_token_ids is None:
            raise RequestError("'messages' is required (or 'prompt_token_ids')", param="messages")
        if self.messages is not None and self.prompt_token_ids is not None:
            raise RequestError("give either 'messages' or 'prompt_token_ids', not both",
                               param="prompt_token_ids")
        if self.prompt_token_ids is not None and not self.prompt_token_ids:
            raise RequestError("prompt_token_ids must not be empty", param="prompt_token_ids")

    @property
    def template_variables(self) -> dict[str, Any] | None:
        """chat_template_kwargs with the template variables given as fields."""
        fields = {k: v for k, v in (("reasoning_effort", self.reasoning_effort),
                                    ("documents", self.documents)) if v is not None}
        if not fields:
            return self.chat_template_kwargs
        return {**(self.chat_template_kwargs or {}), **fields}

    @field_validator("tools")
    @classmethod
    def _tools(cls, v):
        try:
            check_tool_definitions(v)
        except RequestError as exc:
            raise ValueError(exc.message) from None
        return v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_needs_tools(cls, v, info: ValidationInfo):
        if (v == "required" or isinstance(v, dict)) and not info.data.get("tools"):
            raise ValueError(f"tool_choice {v!r} requires a non-empty 'tools' list")
        return v

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_kwargs(cls, v):
        reserved = sorted(set(v or ()) & RESERVED_TEMPLATE_VARIABLES)
        if reserved:
            raise ValueError(f"must not set the template's own variable(s) {', '.join(reserved)} "
                             "(use the request's fields)")
        return v

    @field_validator("messages")
    @classmethod
    def _messages(cls, v):
        if v is None:
            raise ValueError("messages must be a list of messages")
        try:
            return normalize_messages(v)
        except RequestError as exc:
            raise ValueError(exc.message) from None


PromptType = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: PromptType
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None
    add_special_tokens: bool = True  # BOS etc. when a prompt is text


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    tools: list[dict[str, Any]] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    tokens: list[int]


Body = TypeVar("Body", bound=BaseModel)


def parse_body(model: type[Body], data: Any) -> Body:
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object")
    if issubclass(model, SamplingFields):
        data = refuse_unsupported(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        param = loc[0] if loc else None
        where = ".".join(loc)
        if err.get("type") == "extra_forbidden":
            raise RequestError(f"unknown field '{where}': this server does not support it",
                               param=param, code="unknown_parameter") from None
        msg = err.get("msg", "invalid value")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        raise RequestError(f"invalid '{where}': {msg}" if where else msg, param=param) from None

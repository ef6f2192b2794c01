"""Request bodies of the OpenAI routes (with vLLM's extensions), validated by pydantic.

A validation failure becomes a 400 whose `param` names the offending field.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from triolm.errors import InvalidRequestError
from triolm.protocol.errors import APIError

ROLES = ("system", "developer", "user", "assistant", "tool")
# What the chat template renderer itself binds (triolm.prompting.template): a request's
# chat_template_kwargs may add variables, never replace these.
RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt", "bos_token",
                                         "eos_token", "raise_exception", "strftime_now"})


def check_tool_definitions(tools: list[dict] | None) -> None:
    for i, tool in enumerate(tools or ()):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise InvalidRequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", "tools")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequestError(f"tools[{i}].function.name must be a non-empty string", "tools")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequestError(f"tools[{i}].function.parameters must be a JSON schema object", "tools")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    # NaN/Infinity (which Python's JSON accepts) would reach the sampler as NaN logits.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

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
    return_tokens_as_token_ids: bool = False
    return_token_ids: bool = False
    response_format: dict[str, Any] | None = None
    guided_choice: list[str] | None = None
    guided_regex: str | None = None
    guided_json: dict[str, Any] | str | None = None
    user: str | None = None

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


class ChatCompletionRequest(SamplingFields):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("tools")
    @classmethod
    def _tools(cls, v):
        try:
            check_tool_definitions(v)
        except InvalidRequestError as exc:
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
        if not v:
            raise ValueError("messages must not be empty")
        for i, m in enumerate(v):
            role = m.get("role")
            if role not in ROLES:
                raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
            content = m.get("content")
            if content is not None and not isinstance(content, (str, list)):
                raise ValueError(f"messages[{i}].content must be a string or a list of content parts")
            if isinstance(content, list):
                for part in content:
                    is_text = isinstance(part, dict) and part.get("type") == "text"
                    if not is_text or not isinstance(part.get("text"), str):
                        raise ValueError(f"messages[{i}].content: only text parts are supported")
            if role == "tool" and not isinstance(m.get("tool_call_id", ""), str):
                raise ValueError(f"messages[{i}].tool_call_id must be a string")
            if content is None and role != "assistant":
                raise ValueError(f"messages[{i}].content is required for role {role!r}")
        return v


PromptType = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: PromptType
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None


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
        raise APIError(400, "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err.get("loc", ())]
        param = loc[0] if loc else None
        where = ".".join(loc)
        msg = err.get("msg", "invalid value")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        raise APIError(400, f"invalid '{where}': {msg}" if where else msg, param=param) from None

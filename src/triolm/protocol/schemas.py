"""Request bodies of the OpenAI routes (with vLLM's extensions), validated by pydantic.

A validation failure becomes a 400 whose `param` names the offending field.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from triolm.errors import InvalidRequestError
from triolm.prompting.prompts import check_tool_definitions
from triolm.protocol.errors import APIError

ROLES = ("system", "developer", "user", "assistant", "tool")
# What the chat template renderer itself binds (triolm.prompting.template): a request's
# chat_template_kwargs may add variables, never replace these.
RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt", "bos_token",
                                         "eos_token", "raise_exception", "strftime_now"})


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    # NaN/Infinity (which Python's JSON accepts) would reach the sampler as NaN logits.
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: Optional[str] = None
    n: int = 1
    max_tokens: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=-1)
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    # bounded so logits / penalty cannot overflow float32 into inf (then NaN probabilities)
    repetition_penalty: Optional[float] = Field(default=None, ge=0.01, le=100.0)
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[str, float]] = None
    seed: Optional[int] = Field(default=None, ge=-(1 << 63), lt=(1 << 64) - 64)  # torch's seed range
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    skip_special_tokens: bool = True
    return_tokens_as_token_ids: bool = False
    return_token_ids: bool = False
    response_format: Optional[dict[str, Any]] = None
    guided_choice: Optional[list[str]] = None
    guided_regex: Optional[str] = None
    guided_json: Optional[Union[dict[str, Any], str]] = None
    user: Optional[str] = None

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
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: Optional[dict[str, Any]] = None

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
                    if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise ValueError(f"messages[{i}].content: only text parts are supported")
            if role == "tool" and not isinstance(m.get("tool_call_id", ""), str):
                raise ValueError(f"messages[{i}].tool_call_id must be a string")
            if content is None and role != "assistant":
                raise ValueError(f"messages[{i}].content is required for role {role!r}")
        return v


PromptType = Union[str, list[str], list[int], list[list[int]]]


class CompletionRequest(SamplingFields):
    prompt: PromptType
    echo: bool = False
    logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    suffix: Optional[str] = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[dict[str, Any]]] = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    tools: Optional[list[dict[str, Any]]] = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: Optional[str] = None
    tokens: list[int]


def parse_body(model: type[BaseModel], data: Any) -> BaseModel:
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

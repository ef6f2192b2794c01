"""The request resolver (triolm.protocol.plan): a checked body and the model's numbers
become a GenerationPlan with the right values, or a RequestError naming the field."""

from __future__ import annotations

import pytest

from triolm.prompting.tool_parsers import GENERIC_TOOL_PARSER
from triolm.protocol.errors import APIError, RequestError
from triolm.protocol.plan import (
    ChatMessages,
    CompletionPrompts,
    ConstraintSpec,
    PromptTokenIds,
    resolve_chat,
    resolve_completion,
)
from triolm.protocol.schemas import ChatCompletionRequest, CompletionRequest
from triolm.protocol.validation import ModelInfo, parse_request

MODEL = ModelInfo(vocab_size=1000, max_model_len=256, max_n=4, max_queue=8, tool_parser="hermes")
GENERIC_MODEL = ModelInfo(vocab_size=1000, max_model_len=256, max_n=4, max_queue=8, tool_parser=GENERIC_TOOL_PARSER)
THINKING_MODEL = ModelInfo(vocab_size=1000, max_model_len=256, max_n=4, max_queue=8, tool_parser="hermes",
                           reasoning=True)
HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def chat(model: ModelInfo = MODEL, **fields):
    return resolve_chat(parse_request(ChatCompletionRequest, {"messages": HI, **fields}), model)


def completion(model: ModelInfo = MODEL, **fields):
    return resolve_completion(parse_request(CompletionRequest, {"prompt": "Once", **fields}), model)


def refusal(resolve, **fields) -> RequestError:
    with pytest.raises(RequestError) as caught:
        resolve(**fields)
    return caught.value


# -- a resolved plan carries the request's values ----------------------------------------------
def test_chat_plan_carries_sampling_and_output_options():
    plan = chat(n=2, temperature=0.5, top_p=0.9, top_k=-1, min_p=0.1, seed=7, max_completion_tokens=20,
                stop=["END", "STOP"], logit_bias={"5": 2.5}, stop_token_ids=[9], logprobs=True, top_logprobs=3,
                stream=True, stream_options={"include_usage": True}, min_tokens=2, request_id="abc",
                include_stop_str_in_output=True)
    assert plan.n == 2
    assert plan.max_tokens == 20
    assert plan.stops == ("END", "STOP")
    assert plan.include_stop_str and plan.stream and plan.include_usage
    assert plan.request_id == "abc"
    s = plan.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (0.5, 0.9, 0, 0.1)
    assert s.logit_bias == ((5, 2.5),) and s.stop_token_ids == (9,) and s.min_tokens == 2
    assert s.logprobs == 3
    assert plan.tool_parser is None and plan.constraint is None


def test_each_generation_gets_its_own_seed_and_the_first_the_prompt_logprobs():
    plan = chat(n=3, seed=100, prompt_logprobs=2)
    params = [plan.sampling_params(i, 10) for i in range(3)]
    assert [p.seed for p in params] == [100, 101, 102]
    assert [p.max_tokens for p in params] == [10, 10, 10]
    assert [p.prompt_logprobs for p in params] == [2, None, None]


def test_every_completion_choice_reports_prompt_logprobs_and_echo_with_logprobs_asks_for_them():
    plan = completion(n=2, echo=True, logprobs=1)
    assert plan.prompt_logprobs == 1
    assert [plan.sampling_params(i, 5).prompt_logprobs for i in range(2)] == [1, 1]
    assert plan.sampling.logprobs == 1


def test_tiny_temperatures_are_greedy():
    assert chat(temperature=1e-6).sampling.greedy
    assert not chat(temperature=0.01).sampling.greedy


def test_chat_prompt_is_the_normalized_messages():
    plan = chat(messages=[{"role": "developer", "content": "Be brief."},
                          {"role": "assistant", "content": [{"type": "text", "text": "Hel"},
                                                            {"type": "text", "text": "lo"}]},
                          {"role": "user", "content": [{"type": "text", "text": "a"}]}],
                add_generation_prompt=False, continue_final_message=True, chat_template_kwargs={"x": 1},
                reasoning_effort="low")
    assert isinstance(plan.prompt, ChatMessages)
    assert [m["role"] for m in plan.prompt.messages] == ["system", "assistant", "user"]
    assert plan.prompt.messages[1]["content"] == "Hello"
    assert plan.prompt.messages[2]["content"] == [{"type": "text", "text": "a"}]  # chunks for mistral-common
    assert plan.prompt.continue_final_message and not plan.prompt.add_generation_prompt
    assert plan.prompt.template_variables == {"x": 1, "reasoning_effort": "low"}


def test_prompt_token_ids_are_the_prompt():
    body = parse_request(ChatCompletionRequest, {"prompt_token_ids": [1, 2, 3]})
    assert resolve_chat(body, MODEL).prompt == PromptTokenIds([1, 2, 3])


def test_chat_max_tokens_default_to_what_the_context_leaves():
    assert chat().max_tokens_for(56) == 200
    assert chat(max_tokens=10).max_tokens_for(56) == 10


def test_completion_prompts_and_default_max_tokens():
    assert completion().prompt == CompletionPrompts(["Once"], add_special_tokens=True)
    assert completion(prompt=[[1, 2], [3]]).prompt.prompts == [[1, 2], [3]]
    assert completion(prompt=[5, 6]).prompt.prompts == [[5, 6]]
    assert completion().max_tokens_for(10) == 16


def test_completion_echo_alone_generates_one_token_and_tells_none():
    plan = completion(echo=True, max_tokens=0)
    assert plan.echo_only
    assert plan.max_tokens_for(10) == 1


def test_truncation_keeps_the_end_or_the_start():
    ids = list(range(10))
    assert chat(truncate_prompt_tokens=3).truncated(ids) == [7, 8, 9]
    assert chat(truncate_prompt_tokens=3, truncation_side="right").truncated(ids) == [0, 1, 2]
    assert chat(truncate_prompt_tokens=-1).truncated(ids) == ids  # the context holds them all
    assert chat().truncated(ids) == ids


def test_echo_text_is_the_message_the_reply_continues():
    last = {"role": "assistant", "content": [{"type": "text", "text": "The answer"}]}
    assert chat(messages=[*HI, last], echo=True, add_generation_prompt=False).echo_text == "The answer"
    assert chat(messages=[*HI, last], echo=True).echo_text == "The answer"
    assert chat(echo=True).echo_text == ""  # a user turn is not continued by the reply


# -- tools and constraints ----------------------------------------------------------------------
def test_tool_parser_follows_tools_and_tool_choice():
    assert chat(tools=TOOLS).tool_parser == "hermes"
    assert chat(tools=TOOLS).tool_names == ["get_weather"]
    assert chat(tools=TOOLS, tool_choice="none").tool_parser is None
    assert chat(tools=TOOLS, tool_choice="none").skip_special_tokens
    assert not chat(tools=TOOLS).skip_special_tokens  # tool markup may be special tokens
    assert not chat(THINKING_MODEL).skip_special_tokens  # and so may thinking markup


def test_a_generic_format_reply_is_parsed_even_with_tool_choice_none():
    plan = chat(GENERIC_MODEL, tools=TOOLS, tool_choice="none")
    assert plan.tool_parser == GENERIC_TOOL_PARSER
    assert plan.constraint == ConstraintSpec(tools=TOOLS, tool_choice="none", generic_tools=True)


def test_a_session_parser_reads_the_reply_and_the_model_format_forces_calls():
    body = parse_request(ChatCompletionRequest, {"messages": HI, "tools": TOOLS, "tool_choice": "required"})
    plan = resolve_chat(body, MODEL, session_tool_parser="llama3_json")
    assert plan.tool_parser == "llama3_json"
    assert plan.constraint == ConstraintSpec(tools=TOOLS, tool_choice="required", tool_parser="hermes")


def test_structured_output_names_the_field_it_came_from():
    schema = {"type": "object"}
    assert chat(response_format={"type": "json_object"}).constraint.answer == {
        "response_format": {"type": "json_object"}, "param": "response_format"}
    assert chat(structured_outputs={"json": schema}).constraint.answer == {
        "guided_json": schema, "param": "structured_outputs"}
    assert completion(grammar="root ::= \"a\"").constraint.answer == {"grammar": "root ::= \"a\"", "param": "grammar"}
    assert chat(response_format={"type": "text"}).constraint is None


def test_with_tool_choice_none_only_the_answer_is_constrained():
    plan = chat(tools=TOOLS, tool_choice="none", guided_regex="a+")
    assert plan.constraint == ConstraintSpec(answer={"guided_regex": "a+", "param": "guided_regex"},
                                             parallel_tool_calls=True)


# -- each rejection names the field -------------------------------------------------------------
@pytest.mark.parametrize(("fields", "param"), [
    ({"n": 5}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"min_tokens": 300}, "min_tokens"),
    ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
    ({"logit_bias": {"1000": 1.0}}, "logit_bias"),
    ({"logit_bias": {"x": 1.0}}, "logit_bias"),
    ({"stop_token_ids": [1000]}, "stop_token_ids"),
    ({"allowed_token_ids": [-1]}, "allowed_token_ids"),
    ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
])
def test_chat_refusals_name_the_param(fields, param):
    err = refusal(chat, **fields)
    assert err.param == param
    assert err.status == 400 and err.body()["error"]["type"] == "invalid_request_error"


def test_more_generations_than_the_server_queues_is_too_large():
    err = refusal(completion, prompt=["a", "b", "c"], n=3)
    assert (err.param, err.code) == ("n", "request_too_large")


@pytest.mark.parametrize(("fields", "param"), [
    ({"suffix": "end"}, "suffix"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[1], "a"]}, "prompt"),
    ({"prompt": [[1], []]}, "prompt"),
    ({"prompt": [5, 1000]}, "prompt"),
    ({"max_tokens": 0}, "max_tokens"),
])
def test_completion_refusals_name_the_param(fields, param):
    assert refusal(completion, **fields).param == param


def test_prompt_token_ids_must_be_in_the_vocabulary():
    body = parse_request(ChatCompletionRequest, {"prompt_token_ids": [1, 1000]})
    with pytest.raises(RequestError) as caught:
        resolve_chat(body, MODEL)
    assert caught.value.param == "prompt_token_ids" and "1000" in caught.value.message


def test_mistral_common_writes_the_special_tokens_itself():
    mistral = ModelInfo(vocab_size=1000, max_model_len=256, max_n=4, max_queue=8, tool_parser="mistral",
                        renders_tokens=True)
    assert refusal(chat, model=mistral, add_special_tokens=True).param == "add_special_tokens"
    assert not chat(mistral).prompt.add_special_tokens


def test_generic_tools_cannot_be_combined_with_structured_output():
    err = refusal(chat, model=GENERIC_MODEL, tools=TOOLS, response_format={"type": "json_object"})
    assert err.param == "tools"


def test_a_session_prompt_cannot_be_truncated():
    body = parse_request(ChatCompletionRequest, {"messages": HI, "truncate_prompt_tokens": 4})
    with pytest.raises(RequestError) as caught:
        resolve_chat(body, MODEL, session_tool_parser="hermes")
    assert caught.value.param == "truncate_prompt_tokens"


@pytest.mark.parametrize(("prompt_tokens", "max_tokens", "min_tokens", "param"), [
    (256, None, 0, "messages"),
    (250, 10, 0, "max_tokens"),
    (250, None, 7, "min_tokens"),
])
def test_the_context_check_names_the_param(prompt_tokens, max_tokens, min_tokens, param):
    plan = chat(max_tokens=max_tokens, min_tokens=min_tokens)
    with pytest.raises(RequestError) as caught:
        plan.max_tokens_for(prompt_tokens)
    assert (caught.value.param, caught.value.code) == (param, "context_length_exceeded")


def test_a_completion_prompt_too_long_names_prompt():
    with pytest.raises(RequestError) as caught:
        completion().max_tokens_for(256)
    assert caught.value.param == "prompt"


def test_request_error_is_the_openai_error_shape():
    err = RequestError("n must be between 1 and 4, got 5", param="n")
    assert isinstance(err, APIError)
    assert err.body() == {"error": {"message": "n must be between 1 and 4, got 5", "type": "invalid_request_error",
                                    "param": "n", "code": None}}

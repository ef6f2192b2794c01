"""Why a sequence ended is one `Finish` value: made by the engine (its step, or `finish`
when told from outside its token loop), mapped to OpenAI's words by one protocol
function and read back from a backend's answer by its inverse."""

import pytest

from triolm.engine import finish as finishes
from triolm.engine.finish import Finish
from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampling_params import SamplingParams
from triolm.formats.hf_config import read_hf_config
from triolm.formats.safetensors_loader import read_safetensors
from triolm.model.llama import LlamaModel
from triolm.protocol.finish_reason import finish_of_openai, openai_finish

EOS = 2
PROMPT = list(range(20, 60))


@pytest.fixture(scope="module")
def model(tiny_model):
    paths = tiny_model("llama")
    return LlamaModel(read_hf_config(paths.hf_dir), read_safetensors(paths.hf_dir))


def finishes_of(engine: LLMEngine) -> dict[str, Finish | None]:
    """Step to the end; each request's last output's finish (every earlier one is None)."""
    last: dict[str, Finish | None] = {}
    while engine.has_unfinished():
        for out in engine.step():
            assert last.get(out.request_id) is None, "an output after the finishing one"
            last[out.request_id] = out.finish
    return last


def test_the_engine_says_which_token_ended_each_sequence_and_why(model):
    engine = LLMEngine(model, (EOS,), EngineConfig(max_model_len=256))
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    engine.add_request("g", PROMPT, greedy)
    first = None
    while engine.has_unfinished():
        for out in engine.step():
            first = out.token_id if first is None else first
    bias = ((EOS, 100.0),)
    engine.add_request("eos", PROMPT, SamplingParams(temperature=0, max_tokens=6, logit_bias=bias))
    engine.add_request("stop_id", PROMPT, SamplingParams(temperature=0, max_tokens=8, stop_token_ids=(first,)))
    engine.add_request("length", PROMPT, greedy)
    engine.add_request("eos_as_stop_id", PROMPT, SamplingParams(temperature=0, max_tokens=6, logit_bias=bias,
                                                                stop_token_ids=(EOS,)))
    assert finishes_of(engine) == {
        "eos": Finish("stop", matched=None, stop_token=EOS),  # vLLM: no stop_reason for EOS
        "stop_id": Finish("stop", matched=first, stop_token=first),
        "length": Finish("length"),
        "eos_as_stop_id": Finish("stop", matched=EOS, stop_token=EOS),
    }


def test_a_sequence_ended_from_outside_keeps_that_finish_and_frees_its_blocks(model):
    engine = LLMEngine(model, (EOS,), EngineConfig(max_model_len=256))
    engine.add_request("s", PROMPT, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    engine.step()
    seq = engine.sequences["s"]
    assert engine.block_manager.num_used > 0
    assert engine.finish("s", finishes.stop_string("STOP"))
    assert seq.finish == Finish("stop", matched="STOP") and engine.block_manager.num_used == 0
    assert not engine.finish("s", finishes.aborted("late"))  # it already ended: its finish stands
    assert seq.finish == Finish("stop", matched="STOP")
    engine.add_request("a", PROMPT, SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    engine.step()
    assert engine.abort_all("weights swapped") == {"a": Finish("abort", detail="weights swapped")}
    assert not engine.has_unfinished()


@pytest.mark.parametrize(("finish", "called_tools", "expected"), [
    (Finish("stop", stop_token=EOS), False, ("stop", None)),
    (finishes.stop_token(7), False, ("stop", 7)),
    (finishes.stop_string("END"), False, ("stop", "END")),
    (finishes.LENGTH, False, ("length", None)),
    (finishes.DEADLINE, False, ("length", None)),
    (finishes.aborted("weights swapped"), False, ("abort", None)),
    (finishes.failed("grammar"), False, ("error", None)),
    (Finish("stop", stop_token=EOS), True, ("tool_calls", None)),
    (finishes.stop_string("END"), True, ("tool_calls", "END")),
    (finishes.LENGTH, True, ("length", None)),  # cut short: more (calls or text) was coming
    (None, False, (None, None)),
])
def test_each_finish_has_one_openai_finish_reason_and_stop_reason(finish, called_tools, expected):
    assert openai_finish(finish, called_tools) == expected


@pytest.mark.parametrize(("wire", "last", "expected"), [
    (("stop", None), EOS, Finish("stop", stop_token=EOS)),
    (("stop", 9), 9, Finish("stop", matched=9, stop_token=9)),
    (("stop", "END"), EOS, Finish("stop", matched="END")),  # a stop string: the last token is text
    (("stop", None), 5, Finish("stop")),  # not a stop token: e.g. a complete grammar
    (("length", None), EOS, Finish("length")),
    (("abort", None), 5, Finish("abort")),
    (("content_filter", None), 5, Finish("stop")),
    ((None, None), 5, None),
])
def test_a_backends_finish_reads_back_into_the_same_value(wire, last, expected):
    got = finish_of_openai(*wire, last, {EOS, 9})
    assert got == expected
    if got is not None and wire[0] != "content_filter":
        assert openai_finish(got) == wire

"""Every sampling parameter changes what the sampler does, per sequence."""

import math

import pytest
import torch

from triolm.engine.llm_engine import EngineConfig, LLMEngine
from triolm.engine.sampler import Sampler
from triolm.engine.sampling_params import SamplingParams
from triolm.engine.sequence import Sequence
from triolm.formats.hf_config import read_hf_config
from triolm.formats.safetensors_loader import read_safetensors
from triolm.model.llama import LlamaModel

EOS = 2


@pytest.fixture(scope="module")
def model(tiny_model):
    paths = tiny_model("llama")
    return LlamaModel(read_hf_config(paths.hf_dir), read_safetensors(paths.hf_dir))


def run(model, requests, max_num_seqs=8):
    engine = LLMEngine(model, (EOS,), EngineConfig(max_num_seqs=max_num_seqs, max_model_len=256))
    for rid, prompt, params in requests:
        engine.add_request(rid, prompt, params)
    outs = {rid: [] for rid, _, _ in requests}
    while engine.has_unfinished():
        for o in engine.step():
            outs[o.request_id].append(o)
    return outs


PROMPT = list(range(20, 60))


def tokens(outs, rid):
    return [o.token_id for o in outs[rid]]


def test_seed_gives_same_tokens_whatever_else_is_in_the_batch(model):
    p = SamplingParams(temperature=1.0, seed=1234, max_tokens=24, ignore_eos=True)
    alone = run(model, [("a", PROMPT, p)])
    crowd = run(model, [("x", PROMPT[:7], SamplingParams(temperature=1.3, max_tokens=30, ignore_eos=True)),
                        ("a", PROMPT, p),
                        ("y", PROMPT[5:], SamplingParams(temperature=0.7, seed=9, max_tokens=10))])
    assert tokens(alone, "a") == tokens(crowd, "a")
    other_seed = run(model, [("a", PROMPT, SamplingParams(temperature=1.0, seed=4321, max_tokens=24, ignore_eos=True))])
    assert tokens(other_seed, "a") != tokens(alone, "a")


def test_top_k_one_is_greedy(model):
    outs = run(model, [("g", PROMPT, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)),
                       ("k", PROMPT, SamplingParams(temperature=1.5, top_k=1, max_tokens=16, ignore_eos=True))])
    assert tokens(outs, "g") == tokens(outs, "k")


def test_logit_bias_forces_a_token(model):
    outs = run(model, [("b", PROMPT, SamplingParams(temperature=0, max_tokens=5, logit_bias=((777, 100.0),)))])
    assert tokens(outs, "b") == [777] * 5


def test_stop_token_ids_min_tokens_and_ignore_eos(model):
    greedy = tokens(run(model, [("g", PROMPT, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))]), "g")
    stop_at = greedy[3]
    outs = run(model, [("s", PROMPT, SamplingParams(temperature=0, max_tokens=10, stop_token_ids=(stop_at,)))])
    assert tokens(outs, "s") == greedy[: greedy.index(stop_at) + 1]
    assert outs["s"][-1].finish.kind == "stop"
    # EOS forced by bias: stops at once, unless ignore_eos or min_tokens hides it
    bias = ((EOS, 100.0),)
    outs = run(model, [("e", PROMPT, SamplingParams(temperature=0, max_tokens=6, logit_bias=bias)),
                       ("i", PROMPT, SamplingParams(temperature=0, max_tokens=6, logit_bias=bias, ignore_eos=True)),
                       ("m", PROMPT, SamplingParams(temperature=0, max_tokens=6, logit_bias=bias, min_tokens=4))])
    assert tokens(outs, "e") == [EOS] and outs["e"][-1].finish.kind == "stop"
    assert tokens(outs, "i") == [EOS] * 6 and outs["i"][-1].finish.kind == "length"
    assert EOS not in tokens(outs, "m")[:4] and tokens(outs, "m")[4] == EOS


def test_penalties_change_greedy_output(model):
    base = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    greedy = tokens(run(model, [("g", PROMPT, base)]), "g")
    assert len(set(greedy)) < len(greedy)  # a random model repeats itself: penalties have work to do
    for kw in ({"repetition_penalty": 2.0}, {"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, **kw)
        penalized = tokens(run(model, [("p", PROMPT, params)]), "p")
        assert penalized != greedy, kw


def test_logprobs_are_the_raw_distribution(model):
    outs = run(model, [("l", PROMPT, SamplingParams(temperature=0, max_tokens=3, logprobs=5, ignore_eos=True))])
    for o in outs["l"]:
        assert o.logprob < 0
        ids = [i for i, _ in o.top_logprobs]
        lps = [lp for _, lp in o.top_logprobs]
        assert lps == sorted(lps, reverse=True) and len(ids) == 5
        assert ids[0] == o.token_id and math.isclose(lps[0], o.logprob, rel_tol=1e-6)


def _seq(params, generated=()):
    seq = Sequence("s", [1, 2, 3], params)
    for t in generated:
        seq.append(t)
    return seq


def test_top_p_and_min_p_cut_the_tail():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    sampler = Sampler((), seed=0)
    for params, allowed in [(SamplingParams(top_p=0.6, seed=1), {0, 1}),
                            (SamplingParams(min_p=0.5, seed=1), {0, 1}),
                            (SamplingParams(top_k=3, seed=1), {0, 1, 2})]:
        seen = {sampler(logits, [_seq(attr_copy(params, seed))])[0].token_id for seed in range(200)}
        assert seen == allowed, params


def attr_copy(params, seed):
    import attrs
    return attrs.evolve(params, seed=seed)


def test_greedy_takes_the_first_of_tied_maxima_as_torch_argmax_does():
    greedy = SamplingParams(temperature=0)
    logits = torch.tensor([[0.0, 3.0, -1.0, 3.0], [-0.0, 0.0, 0.0, -2.0], [1.0, 2.0, 7.0, 7.0]])
    got = [t.token_id for t in Sampler(()).__call__(logits, [_seq(greedy) for _ in range(3)])]
    assert got == [int(torch.argmax(row)) for row in logits] == [1, 0, 2]


def test_any_non_finite_logit_fails_its_row_and_only_it():
    greedy = SamplingParams(temperature=0)
    rows = torch.zeros(5, 8)
    rows[0, 3] = math.inf
    rows[1, 5] = -math.inf
    rows[2, 0] = math.nan
    rows[3, :] = 3e38  # huge but finite: their sum overflows, the logits are still fine
    rows[3, 6] = 3.2e38
    rows[4, 2] = 1.0
    out = Sampler(()).__call__(rows, [_seq(greedy) for _ in range(5)])
    assert [isinstance(o, FloatingPointError) for o in out] == [True, True, True, False, False]
    assert out[3].token_id == 6 and out[4].token_id == 2

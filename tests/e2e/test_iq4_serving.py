"""A GGUF file of IQ4_NL and IQ4_XS matrices served by the real server: the tokens and
log-probabilities the client receives are the dequantized float32 model's."""

from __future__ import annotations

import attrs
import openai
import pytest
import torch

from support.engine_run import greedy_with_logits
from support.model_factory import random_weights
from support.server_thread import ServerThread
from triolm.formats.gguf_reader import read_gguf
from triolm.formats.gguf_writer import write_gguf
from triolm.loading.served_model import load_served_model
from triolm.model.llama import LlamaModel
from triolm.settings import ServerSettings

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12] * 5, [40, 41, 42]]
STEPS = 8


@pytest.fixture(scope="module")
def iq4_gguf(tiny_model, tmp_path_factory):
    """The tiny llama's tokenizer and template around 256-wide layers (IQ4_XS blocks hold
    256 values), IQ4_XS with IQ4_NL for v, down and the embedding."""
    paths = tiny_model("llama", gguf_types=("F32",))
    tokenizer = {k: v for k, v in read_gguf(paths.gguf_path("F32")).metadata.items() if k.startswith("tokenizer.")}
    config = attrs.evolve(paths.config, hidden_size=256, intermediate_size=512, head_dim=64)
    path = tmp_path_factory.mktemp("iq4") / "tiny-IQ4_XS.gguf"
    return write_gguf(path, config, random_weights(config, 11), tokenizer, "IQ4_XS",
                      type_overrides={"blk.0.attn_v.weight": "IQ4_NL", "blk.1.ffn_down.weight": "IQ4_NL",
                                      "token_embd.weight": "IQ4_NL"})


def test_server_serves_iq4_blocks_as_the_dequantized_model(iq4_gguf):
    settings = ServerSettings(model=str(iq4_gguf), max_num_seqs=2)
    served = load_served_model(settings)
    kinds = served.model.weight_kinds()
    assert {"iq4_xs", "iq4_xs+iq4_xs+iq4_nl", "iq4_nl"} <= kinds.keys() and "dense" not in kinds, kinds
    ref = read_gguf(iq4_gguf)  # every weight dequantized to float32 by the gguf package
    reference = LlamaModel(ref.config, ref.tensors)
    with ServerThread(settings, served) as srv:
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="x", max_retries=0)
        r = client.completions.create(model=served.name, prompt=PROMPTS, max_tokens=STEPS, temperature=0,
                                      logprobs=0, extra_body={"ignore_eos": True, "return_token_ids": True})
    assert [c.finish_reason for c in r.choices] == ["length", "length"]
    for choice, prompt in zip(sorted(r.choices, key=lambda c: c.index), PROMPTS, strict=True):
        logits, (tokens,) = greedy_with_logits(reference, [prompt], STEPS)
        assert choice.token_ids == tokens
        want = torch.log_softmax(logits.double(), -1)[torch.arange(STEPS), tokens]
        got = torch.tensor(choice.logprobs.token_logprobs, dtype=torch.float64)
        assert (got - want).abs().max().item() <= 1e-4

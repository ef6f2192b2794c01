"""`/v1/embeddings` with a decoder embedding model, through a real server and the official
`openai` client: a tiny random qwen3 model laid out as Qwen3-Embedding is (the bare
decoder's tensors, a sentence-transformers last-token Pooling + Normalize pipeline) must
give transformers' last-token-pooled, normalized hidden states of the same weights.
(Contract: contracts/embeddings.md, clauses EMB-*.)"""

from __future__ import annotations

import base64
import json
import shutil

import httpx
import numpy as np
import openai
import pytest
import torch
import trio
from safetensors.torch import load_file, save_file

from support.server_thread import ServerThread
from triolm.cli import build_parser, settings_from_args
from triolm.errors import ModelLoadError
from triolm.loading.embedding_spec import (
    EmbeddingSpec,
    resolve_task,
    spec_from_gguf_metadata,
    spec_from_model_dir,
)
from triolm.loading.served_model import load_served_model
from triolm.settings import ServerSettings

TEXTS = ["The capital of France is Paris.", "Gravity attracts", "a much longer sentence, " * 6]


def embedding_dir(src, dst, pooling: str = "pooling_mode_lasttoken", normalize: bool = True):
    """The tiny qwen3 model saved as Qwen3-Embedding is: `Qwen3Model` tensors (no `model.`
    prefix, no LM head) and a sentence-transformers pipeline."""
    shutil.copytree(src, dst)
    for path in dst.glob("*.safetensors"):
        tensors = load_file(path)
        save_file({k.removeprefix("model."): v for k, v in tensors.items() if not k.startswith("lm_head.")}, path)
    # Qwen3-Embedding's tokenizer file appends a special token that is not its eos_token
    # (`<|endoftext|>`; eos is `<|im_end|>`): the pooled last token is that one
    tokenizer = json.loads((dst / "tokenizer.json").read_text())
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[IMG]", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                 {"SpecialToken": {"id": "[IMG]", "type_id": 1}}],
        "special_tokens": {"[IMG]": {"id": "[IMG]", "ids": [10], "tokens": ["[IMG]"]}}}
    (dst / "tokenizer.json").write_text(json.dumps(tokenizer))
    tokenizer_config = json.loads((dst / "tokenizer_config.json").read_text())
    for key in ("add_bos_token", "add_eos_token"):
        tokenizer_config.pop(key, None)
    (dst / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = json.loads((dst / "config.json").read_text())
    config["architectures"] = ["Qwen3Model"]
    (dst / "config.json").write_text(json.dumps(config))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (dst / "modules.json").write_text(json.dumps(modules))
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": config["hidden_size"], "pooling_mode_cls_token": False,
         "pooling_mode_mean_tokens": False, "pooling_mode_lasttoken": False, pooling: True}))
    return dst


@pytest.fixture(scope="module")
def embed_dir(tiny_model, tmp_path_factory):
    return embedding_dir(tiny_model("qwen3").hf_dir, tmp_path_factory.mktemp("emb") / "qwen3-embedding")


@pytest.fixture(scope="module")
def embed_served(embed_dir):
    return load_served_model(ServerSettings(model=str(embed_dir)))


@pytest.fixture(scope="module")
def embed_server(embed_served):
    with ServerThread(ServerSettings(model=embed_served.path, max_num_seqs=2), embed_served) as srv:
        yield srv


@pytest.fixture
def eclient(embed_server):
    return openai.OpenAI(base_url=embed_server.base_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(embed_dir):
    """transformers on the same directory: its tokenizer's ids, and Qwen3Model's last hidden
    state of the last token."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(embed_dir), torch_dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(embed_dir))

    def pooled(text: str) -> tuple[list[int], torch.Tensor]:
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            return ids, model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]

    return pooled


# -- EMB-001: the numbers ------------------------------------------------------------------
def test_emb_001_batch_equals_transformers_last_token_pooled_normalized(eclient, embed_served, reference):
    r = eclient.embeddings.create(model=embed_served.name, input=TEXTS, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2]
    for text, datum in zip(TEXTS, r.data, strict=True):
        ids, pooled = reference(text)
        assert ids[-1] == 10  # the tokenizer file's appended token, as in Qwen3-Embedding
        expected = torch.nn.functional.normalize(pooled, dim=0)
        got = torch.tensor(datum.embedding)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        assert abs(float(got.norm()) - 1.0) < 1e-5
    assert r.usage.prompt_tokens == sum(len(reference(t)[0]) for t in TEXTS)


def test_emb_001_token_id_inputs_equal_their_text(eclient, embed_served, reference):
    ids = [reference(t)[0] for t in TEXTS]
    by_text = eclient.embeddings.create(model=embed_served.name, input=TEXTS, encoding_format="float")
    by_ids = eclient.embeddings.create(model=embed_served.name, input=ids, encoding_format="float")
    one = eclient.embeddings.create(model=embed_served.name, input=ids[1], encoding_format="float")
    for a, b in zip(by_text.data, by_ids.data, strict=True):
        assert a.embedding == b.embedding
    # alone or in a batch: the same up to summation order (packed matmuls)
    torch.testing.assert_close(torch.tensor(one.data[0].embedding), torch.tensor(by_text.data[1].embedding),
                               atol=1e-6, rtol=1e-5)


# -- EMB-002: base64 ----------------------------------------------------------------------------
def test_emb_002_base64_is_the_same_float32_vector(eclient, embed_server, embed_served):
    floats = eclient.embeddings.create(model=embed_served.name, input=TEXTS[0], encoding_format="float")
    raw = httpx.post(embed_server.base_url + "/v1/embeddings",
                     json={"input": TEXTS[0], "encoding_format": "base64"}, timeout=60).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert decoded.tolist() == list(np.float32(floats.data[0].embedding))
    # the client asks for base64 by default and decodes it itself
    assert eclient.embeddings.create(model=embed_served.name, input=TEXTS[0]).data[0].embedding == \
        floats.data[0].embedding

    async def run_async():
        aclient = openai.AsyncOpenAI(base_url=embed_server.base_url + "/v1", api_key="unused", max_retries=0)
        return (await aclient.embeddings.create(model=embed_served.name, input=TEXTS[0])).data[0].embedding

    assert trio.run(run_async) == floats.data[0].embedding


# -- EMB-003: dimensions (Matryoshka) ----------------------------------------------------------
def test_emb_003_dimensions_truncates_then_normalizes(eclient, embed_served, reference):
    r = eclient.embeddings.create(model=embed_served.name, input=TEXTS[0], dimensions=16, encoding_format="float")
    expected = torch.nn.functional.normalize(reference(TEXTS[0])[1][:16], dim=0)
    torch.testing.assert_close(torch.tensor(r.data[0].embedding), expected, atol=1e-5, rtol=1e-4)
    for bad in (0, embed_served.config.hidden_size + 1):
        with pytest.raises(openai.BadRequestError) as exc:
            eclient.embeddings.create(model=embed_served.name, input="x", dimensions=bad)
        assert exc.value.body["param"] == "dimensions"


# -- EMB-004: detection and --task -------------------------------------------------------------
def test_emb_004_task_detected_from_the_files_or_set_by_the_flag(embed_served, tiny_model, tmp_path):
    assert embed_served.embedding == EmbeddingSpec("last", True)  # detected: served with no flag
    mean_dir = embedding_dir(tiny_model("qwen3").hf_dir, tmp_path / "mean", "pooling_mode_mean_tokens",
                             normalize=False)
    assert spec_from_model_dir(mean_dir) == EmbeddingSpec("mean", False)
    assert spec_from_model_dir(tiny_model("qwen3").hf_dir) is None
    assert resolve_task("auto", None, "qwen3") is None
    assert resolve_task("embed", None, "qwen3") == EmbeddingSpec()
    assert resolve_task("generate", EmbeddingSpec("mean", False), "qwen3") is None
    assert resolve_task("auto", EmbeddingSpec("mean", False), "qwen3") == EmbeddingSpec("mean", False)
    with pytest.raises(ModelLoadError, match="gemma3"):
        resolve_task("embed", None, "gemma3")
    args = build_parser().parse_args(["serve", "m.gguf", "--task", "embed"])
    assert settings_from_args(args).task == "embed"
    assert spec_from_gguf_metadata({"general.architecture": "qwen3", "qwen3.pooling_type": 3}) == EmbeddingSpec()
    assert spec_from_gguf_metadata({"general.architecture": "qwen3", "qwen3.pooling_type": 1}).pooling == "mean"
    assert spec_from_gguf_metadata({"general.architecture": "llama"}) is None
    with pytest.raises(ModelLoadError, match="reranker"):
        spec_from_gguf_metadata({"general.architecture": "qwen3", "qwen3.pooling_type": 4})


def test_emb_004_gguf_with_pooling_metadata_loads_as_an_embedding_model(tiny_model, tmp_path):
    from triolm.formats.gguf_reader import read_gguf
    from triolm.formats.gguf_writer import write_gguf

    paths = tiny_model("qwen3")
    source = read_gguf(paths.gguf_path("F32"), torch.float32)
    meta = {k: v for k, v in source.metadata.items() if k.startswith("tokenizer.")}
    path = write_gguf(tmp_path / "emb.gguf", paths.config, load_file(next(paths.hf_dir.glob("*.safetensors"))),
                      {**meta, "qwen3.pooling_type": 3}, file_type="F32")
    served = load_served_model(ServerSettings(model=str(path)))
    assert served.embedding == EmbeddingSpec("last", True)


# -- EMB-005: the wrong task is a clear 400 ------------------------------------------------------
def test_emb_005_generate_mode_answers_embeddings_with_a_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.embeddings.create(model="hf", input="hello")
    assert exc.value.body["code"] == "wrong_task" and "--task embed" in exc.value.body["message"]


def test_emb_005_embed_mode_answers_generation_with_a_400(eclient, embed_served):
    with pytest.raises(openai.BadRequestError) as exc:
        eclient.chat.completions.create(model=embed_served.name, messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["code"] == "wrong_task"
    with pytest.raises(openai.BadRequestError):
        eclient.completions.create(model=embed_served.name, prompt="hi")


# -- EMB-006: bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("body, param", [
    ({"input": []}, "input"),
    ({"input": [[]]}, "input"),
    ({"input": [10 ** 9]}, "input"),
    ({"input": "word " * 5000}, "input"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x", "truncate_prompt_tokens": 3}, "truncate_prompt_tokens"),
    ({"input": ["x"] * 2049}, "input"),
])
def test_emb_006_bad_input_is_a_400_naming_it(embed_server, body, param):
    r = httpx.post(embed_server.base_url + "/v1/embeddings", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param

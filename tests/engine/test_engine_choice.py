"""Which engine serves a model: ``split_engine`` and ``choose_engine`` by hand, then a tiny
random-weight Qwen2 GGUF written here (with the default model's real tokenizer) that only
llama.cpp can serve."""

from __future__ import annotations

from dataclasses import replace

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from inference_service.engine.engine import Engine, EngineConfig
from inference_service.engine.engine_choice import ENGINES, GGUFIdentity, choose_engine, split_engine
from inference_service.engine.types import GenerationRequest, SamplingParams
from inference_service.errors import ModelLoadError
from inference_service.models.registry import ModelFile

# --- split_engine ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("a@llamacpp", ("a", "llamacpp")),
    ("x@ctransformers", ("x", "ctransformers")),
    ("hf.co/a/b:Q4_K_M@auto", ("hf.co/a/b:Q4_K_M", "auto")),
    ("path/with@at.gguf", ("path/with@at.gguf", None)),  # an @ inside a path stays the path's
    ("name=path/with@at.gguf@llamacpp", ("name=path/with@at.gguf", "llamacpp")),
    ("smollm2:135m", ("smollm2:135m", None)),
    ("a@vllm", ("a@vllm", None)),  # not an engine's name: part of the model spec
    ("@llamacpp", ("@llamacpp", None)),  # no model before it
])
def test_split_engine(spec, expected):
    assert split_engine(spec) == expected


# --- choose_engine on hand-made identities -----------------------------------------------------

SMOLLM = GGUFIdentity(architecture="llama", tokenizer_model="gpt2", pre_tokenizer="smollm", rope_scaling="none")
LLAMA_SPM = GGUFIdentity(architecture="llama", tokenizer_model="llama", pre_tokenizer="default", rope_scaling="none")
LLAMA3 = GGUFIdentity(architecture="llama", tokenizer_model="gpt2", pre_tokenizer="llama-bpe", rope_scaling="none")
YARN = GGUFIdentity(architecture="llama", tokenizer_model="gpt2", pre_tokenizer="smollm", rope_scaling="yarn")
QWEN2 = GGUFIdentity(architecture="qwen2", tokenizer_model="gpt2", pre_tokenizer="qwen2", rope_scaling="none")


def test_auto_picks_ctransformers_for_llama_with_a_known_byte_level_bpe():
    assert choose_engine("auto", SMOLLM, "m") == "ctransformers"
    assert choose_engine("ctransformers", SMOLLM, "m") == "ctransformers"
    assert choose_engine("llamacpp", SMOLLM, "m") == "llamacpp"  # an explicit choice is kept


@pytest.mark.parametrize("identity, reason", [
    (LLAMA_SPM, "tokenizer 'llama'"),
    (LLAMA3, "pre-tokenizer 'llama-bpe'"),
    (YARN, "rope scaling 'yarn'"),
    (QWEN2, "architecture 'qwen2'"),
])
def test_auto_picks_llamacpp_for_the_rest_and_ctransformers_says_why_not(identity, reason):
    assert choose_engine("auto", identity, "m") == "llamacpp"
    assert choose_engine("llamacpp", identity, "m") == "llamacpp"
    with pytest.raises(ModelLoadError) as raised:
        choose_engine("ctransformers", identity, "some-model")
    assert reason in str(raised.value)
    assert "some-model" in str(raised.value)


def test_an_unknown_engine_is_an_error():
    with pytest.raises(ModelLoadError) as raised:
        choose_engine("vllm", SMOLLM, "m")
    message = str(raised.value)
    assert "'vllm'" in message
    assert all(engine in message for engine in ENGINES)


# --- a Qwen2 GGUF written here -------------------------------------------------------------------

N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER, N_CTX = 64, 4, 2, 128, 2, 512
HEAD_DIM = N_EMBD // N_HEAD
QWEN2_NAME = "tiny-qwen2"


def write_qwen2_gguf(path: Path, tokenizer_source: Path) -> Path:
    """Random weights, every tensor llama.cpp's qwen2 loader needs (q/k/v biases included),
    and the real tokenizer of ``tokenizer_source`` (a byte-level BPE GGUF)."""
    fields = GGUFReader(tokenizer_source).fields

    def value(key: str):
        return fields[key].contents()

    rng = np.random.default_rng(0)

    def weight(*shape: int, dtype=np.float32) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(dtype)

    tokens = value("tokenizer.ggml.tokens")
    writer = GGUFWriter(path, "qwen2")
    writer.add_name("tiny random qwen2")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(value("tokenizer.ggml.token_type"))
    writer.add_token_merges(value("tokenizer.ggml.merges"))
    writer.add_bos_token_id(value("tokenizer.ggml.bos_token_id"))
    writer.add_eos_token_id(value("tokenizer.ggml.eos_token_id"))
    writer.add_add_bos_token(False)

    # numpy shapes are (out, in): ggml's ne reversed.
    writer.add_tensor("token_embd.weight", weight(len(tokens), N_EMBD, dtype=np.float16))
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    writer.add_tensor("output.weight", weight(len(tokens), N_EMBD, dtype=np.float16))
    kv = N_HEAD_KV * HEAD_DIM
    for i in range(N_LAYER):
        block = f"blk.{i}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{block}.attn_q.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.attn_q.bias", weight(N_EMBD))
        writer.add_tensor(f"{block}.attn_k.weight", weight(kv, N_EMBD))
        writer.add_tensor(f"{block}.attn_k.bias", weight(kv))
        writer.add_tensor(f"{block}.attn_v.weight", weight(kv, N_EMBD))
        writer.add_tensor(f"{block}.attn_v.bias", weight(kv))
        writer.add_tensor(f"{block}.attn_output.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_up.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_down.weight", weight(N_EMBD, N_FF))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def qwen2_file(model_file, tmp_path_factory) -> ModelFile:
    path = write_qwen2_gguf(tmp_path_factory.mktemp("qwen2") / "tiny-qwen2.gguf", model_file.source_path)
    return ModelFile(QWEN2_NAME, path, "tests")


@pytest.fixture(scope="module")
def qwen2_engine(qwen2_file):
    engine = Engine.load([qwen2_file], EngineConfig(slots=1, max_waiting=2, context_length=1024), engines=["auto"])
    yield engine
    engine.close()


@pytest.mark.model
def test_the_written_file_reads_as_qwen2(qwen2_file, model_file):
    identity = GGUFIdentity.read(qwen2_file.source_path)
    assert identity == replace(QWEN2, embedding_length=N_EMBD)
    assert choose_engine("auto", identity, QWEN2_NAME) == "llamacpp"
    assert choose_engine("auto", GGUFIdentity.read(model_file.source_path), "smollm2:135m") == "ctransformers"


@pytest.mark.model
def test_ctransformers_refuses_it_naming_the_architecture(qwen2_file):
    with pytest.raises(ModelLoadError) as raised:
        Engine.load([qwen2_file], EngineConfig(slots=1), engines=["ctransformers"])
    message = str(raised.value)
    assert "architecture 'qwen2'" in message and QWEN2_NAME in message
    assert "llamacpp" in message  # says what to use instead


@pytest.mark.model
def test_auto_serves_it_on_llamacpp(qwen2_engine):
    (description,) = qwen2_engine.models()
    assert (description.name, description.engine, description.architecture) == (QWEN2_NAME, "llamacpp", "qwen2")
    assert description.context_length == N_CTX  # the model's own, below the configured 1024
    assert not description.has_chat_template  # none in the file, and no fallback for qwen2

    # random weights: random text; only the mechanics are checked
    request = GenerationRequest(model=QWEN2_NAME, prompt="Hello, world", max_tokens=5, ignore_eos=True,
                                sampling=SamplingParams(temperature=0.0))
    chunks = list(qwen2_engine.generate(request))
    last = chunks[-1]
    assert last.finish_reason == "length"
    assert last.usage.completion_tokens == 5
    assert len([i for c in chunks for i in c.token_ids]) == 5
    # the real tokenizer came along: llama.cpp's qwen2 pre-tokenizer over smollm2's vocabulary
    ids, tokens = qwen2_engine.tokenize(QWEN2_NAME, "Hello, world")
    assert last.usage.prompt_tokens == len(ids) > 1
    assert "".join(tokens).replace("Ġ", " ") == "Hello, world"

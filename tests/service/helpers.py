"""Small helpers for the tests that drive the real model over gRPC."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc

MODEL = "smollm2:135m"
SAFETY = 300  # seconds: bounds a hang on a busy 2-core machine; never a measured limit


# The template's default system prompt ("...named SmolLM, trained by Hugging Face") has
# been seen to steer this small model's greedy answer to the France question off course
# ("L'Étoile...", modern llama.cpp gives the same), so the tests that check an answer's
# content send this explicit, plain system message instead.
SYSTEM = ("system", "You are a helpful assistant.")
STORY_TURNS = (SYSTEM, ("user", "Tell me a story about a dragon."))


def no_eos_bias(stub: pb_grpc.InferenceServiceStub) -> dict[int, float]:
    """``logit_bias`` banning the model's end-of-turn tokens (ids asked from its tokenizer):
    greedy decoding then runs exactly ``max_tokens`` tokens."""
    tokenized = stub.Tokenize(pb.TokenizeRequest(model=MODEL, text="<|im_end|><|endoftext|>", raw=True),
                              timeout=SAFETY)
    assert list(tokenized.tokens) == ["<|im_end|>", "<|endoftext|>"]
    return {token_id: -100.0 for token_id in tokenized.token_ids}


def chat(*turns: tuple[str, str]) -> list[pb.ChatMessage]:
    return [pb.ChatMessage(role=role, content=content) for role, content in turns]


def request(*turns: tuple[str, str], **fields) -> pb.GenerateRequest:
    fields.setdefault("temperature", 0.0)
    return pb.GenerateRequest(model=MODEL, messages=chat(*turns), **fields)


@dataclass
class Result:
    messages: list[pb.GenerateResponse]

    @property
    def text(self) -> str:
        return "".join(m.text for m in self.messages)

    @property
    def last(self) -> pb.GenerateResponse:
        return self.messages[-1]

    @property
    def token_ids(self) -> list[int]:
        return [i for m in self.messages for i in m.token_ids]


def generate(stub: pb_grpc.InferenceServiceStub, req: pb.GenerateRequest, timeout: float = SAFETY) -> Result:
    return Result(list(stub.Generate(req, timeout=timeout)))


def generate_retrying_while_full(stub, req: pb.GenerateRequest, timeout: float = SAFETY) -> Result:
    """Retries RESOURCE_EXHAUSTED (the server may still be clearing cancelled requests)."""
    end = time.monotonic() + timeout
    while True:
        try:
            return generate(stub, req, timeout)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > end:
                raise
            time.sleep(0.1)

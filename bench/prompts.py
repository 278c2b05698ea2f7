"""What the benchmark asks: the prompts, and the logit bias that bans the model's end-of-turn
tokens so that greedy decoding makes exactly ``max_tokens`` tokens on every system.

The end-of-turn token ids are asked from the tokenizer, never written down: in process from
the loaded model, over gRPC with ``Tokenize`` of the raw markup (as tests/service/helpers.py
does). Over HTTP (edge, peer) the same ids go in ``logit_bias`` with string keys.
"""

from __future__ import annotations

import random

MODEL = "smollm2:135m"
STORY = "Write a long story about a lighthouse keeper and a storm."
END_OF_TURN_MARKUP = ("<|im_end|>", "<|endoftext|>")  # the model's end-of-turn control tokens


def story(nonce: str) -> str:
    """The decode prompt; the nonce up front keeps any prompt cache from serving it."""
    return f"[{nonce}] {STORY}"


def prompt_of_tokens(n: int, nonce: str) -> str:
    """A raw prompt of roughly ``n`` tokens (the prompt-evaluation rows)."""
    base = ("The quick brown fox jumps over the lazy dog while the harbour bells ring and "
            "the fishermen mend their nets under a grey northern sky. ")
    return f"[{nonce}] " + base * (n // 28 + 1)


def no_eos_bias(token_ids) -> dict[int, float]:
    return {int(i): -100.0 for i in sorted(token_ids)}


def end_of_turn_ids_in_process(engine, model: str = MODEL) -> list[int]:
    return sorted(engine.model(model).end_of_turn_ids)


def end_of_turn_ids_over_grpc(channel, model: str = MODEL) -> list[int]:
    from inference_service.v1 import inference_pb2 as pb
    from inference_service.v1 import inference_pb2_grpc as pb_grpc

    tokenized = pb_grpc.InferenceServiceStub(channel).Tokenize(
        pb.TokenizeRequest(model=model, text="".join(END_OF_TURN_MARKUP), raw=True), timeout=60)
    if tuple(tokenized.tokens) != END_OF_TURN_MARKUP:
        raise SystemExit(f"{model}: end-of-turn markup tokenized as {list(tokenized.tokens)}")
    return sorted(tokenized.token_ids)


_TOPICS = ["lighthouses", "volcanoes", "bees", "the history of bread", "glaciers", "chess openings",
           "the moon landing", "coral reefs", "railways", "paper making", "owls", "desert plants"]


def essay(i: int, nonce: str) -> list[dict]:
    """The i-th of several concurrent streams: a different topic each, inviting a long answer."""
    return [{"role": "user", "content": f"[{nonce}-{i}] Write a long, detailed essay about "
             f"{_TOPICS[i % len(_TOPICS)]}, with several paragraphs covering their history, "
             f"how they work and why they matter."}]


_WORDS = {
    "adj": ["quiet", "ancient", "bright", "narrow", "patient", "curious", "heavy", "distant",
            "gentle", "stubborn", "silver", "hollow"],
    "noun": ["keeper", "merchant", "river", "engineer", "garden", "lantern", "harbour",
             "library", "orchard", "ferry", "tower", "market"],
    "verb": ["repaired", "measured", "followed", "described", "painted", "guarded", "crossed",
             "counted", "visited", "mapped"],
    "place": ["the old mill", "the northern road", "the stone bridge", "the east gate",
              "the salt marsh", "the clock tower", "the hill farm", "the fish market"],
}


def filler_text(rng: random.Random, n_sentences: int) -> str:
    """Plausible sentences, about 20 tokens each (SmolLM2 splits digits one by one)."""
    out = []
    for _ in range(n_sentences):
        w = {k: rng.choice(v) for k, v in _WORDS.items()}
        out.append(f"The {w['adj']} {w['noun']} {w['verb']} the {rng.choice(_WORDS['noun'])} near "
                   f"{w['place']} in the year {rng.randint(1700, 1999)}.")
    return " ".join(out)


def chat_history(history_tokens: int, nonce: str, turns: int = 4, seed: int = 7) -> list[dict]:
    """A deterministic chat of roughly ``history_tokens`` tokens in ``turns`` exchanges.

    The nonce goes first in the system message, so no prompt cache holds any of it before it
    is sent. ~20 tokens a filler sentence plus ~120 of template and wrapping; the real count
    comes from the server's usage.
    """
    rng = random.Random(seed)
    total = max(2 * turns, round((history_tokens - 120) / 20))
    sizes = [total // (2 * turns) + (1 if k < total % (2 * turns) else 0) for k in range(2 * turns)]
    msgs = [{"role": "system", "content": f"Session {nonce}. You are a helpful assistant who keeps "
                                          f"notes about a town's chronicle and answers briefly."}]
    for t in range(turns):
        msgs.append({"role": "user", "content": f"Note {t + 1} of the chronicle: "
                     + filler_text(rng, sizes[2 * t]) + " Please remember it."})
        msgs.append({"role": "assistant", "content": f"Noted ({t + 1}). " + filler_text(rng, sizes[2 * t + 1])})
    return msgs

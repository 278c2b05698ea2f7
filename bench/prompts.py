"""What the benchmark asks: the prompts, and the logit bias that bans the model's end-of-turn
tokens so that greedy decoding makes exactly ``max_tokens`` tokens on every system.

The end-of-turn token ids are asked from the tokenizer, never written down: in process from
the loaded model, over gRPC with ``Tokenize`` of the raw markup (as tests/service/helpers.py
does). Over HTTP (edge, peer) the same ids go in ``logit_bias`` with string keys.
"""

from __future__ import annotations

import difflib
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


def http_bias(bias: dict[int, float]) -> dict:
    """The request fields that carry ``bias`` over HTTP (string keys)."""
    return {"logit_bias": {str(k): v for k, v in bias.items()}}


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


# ---------------------------------------------------------------- the edit workload
# Plain prose of about 250 SmolLM2 tokens; the answer is a copy of it with one word changed,
# so most of the answer is already in the prompt (what prompt-lookup drafts exploit).
EDIT_PARAGRAPH = (
    "Every morning the baker on Mill Street opened her shutters before the church bell rang six. "
    "She had learned the trade from her uncle, who believed that good bread needed patience more "
    "than skill, and she still followed his habits. The dough was mixed the night before and left "
    "to rise slowly in a cool corner of the kitchen, covered with a linen cloth. When the oven was "
    "hot she shaped the loaves by hand, scored the tops with a small blade and slid them onto the "
    "stone floor of the oven with a long wooden paddle. While they baked she swept the shop, "
    "filled the baskets by the window and wrote the prices on a slate. The first customers were "
    "always the same: the postman on his way to the station, two nurses finishing their night "
    "shift, and an old teacher who bought one small loaf and talked about the weather. By eight "
    "o'clock the shelves were full and the street smelled of warm crust. In the afternoon, when "
    "the shop was quiet, she sat by the window with a cup of tea and planned the next day's bread. "
    "On Sundays the shop stayed closed, and she walked along the river to visit her uncle, who "
    "still asked about every loaf she had sold that week and how the new oven was behaving."
)
EDIT_FROM, EDIT_TO = "bread", "cake"
EDIT_SLACK_TOKENS = 16  # edit answers may run this much past the paragraph (a preamble, a longer word)


def edit_messages() -> list[dict]:
    """The edit request. No nonce: every repeat and every system gets the same prompt (and,
    greedy, the same answer); its decode rate does not depend on a cached prompt."""
    return [{"role": "user", "content": f"Repeat the following text exactly, but replace the word "
                                        f"\"{EDIT_FROM}\" with \"{EDIT_TO}\".\n\n{EDIT_PARAGRAPH}"}]


def edit_expected() -> str:
    """The answer a perfect copy would give."""
    return EDIT_PARAGRAPH.replace(EDIT_FROM, EDIT_TO)


def edit_max_tokens(model_file) -> int:
    """The edit answer's token limit: the exact copy's tokens and EDIT_SLACK_TOKENS more, so a
    faithful answer ends by itself."""
    from inference_service.engine.tokenizer import TextTokenizer

    return len(TextTokenizer.from_gguf(model_file).encode_text(edit_expected())) + EDIT_SLACK_TOKENS


def edit_fidelity(answer: str) -> float:
    """How close an answer is to the perfect copy, 0..1 (difflib's ratio): the workload is an
    edit only as far as the model does copy."""
    return difflib.SequenceMatcher(None, answer.strip(), edit_expected(), autojunk=False).ratio()


# ---------------------------------------------------------------- the JSON workload
PET_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "species": {"enum": ["dog", "cat", "rabbit", "parrot", "tortoise"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "colour": {"type": "string", "maxLength": 16},
        "favourite_toys": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["name", "species", "age", "colour", "favourite_toys"],
    "additionalProperties": False,
}


JSON_MAX_TOKENS = 200
JSON_TEMPERATURE = 0.7
JSON_SEED = 1000  # repeat i samples with seed JSON_SEED + i, on every system


def json_messages() -> list[dict]:
    return [{"role": "user", "content": "Invent a pet for a children's story and describe it as JSON: "
                                        "its name, species, age, colour and up to three favourite toys."}]


def json_response_format(schema: dict = PET_SCHEMA, name: str = "pet") -> dict:
    """The OpenAI ``response_format`` asking for JSON valid against ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}

"""Grammar-constrained decoding with llguidance: every sampled token keeps the output valid.

A ``Guide`` holds one generation's matcher: before sampling it masks the logits of every
token the grammar does not allow next (the sampler then chooses among the rest as usual:
penalties, temperature, top-k/top-p, seeds all still apply), and after sampling it advances
with the chosen token. llguidance works on the vocabulary's bytes, so one adapter over the
shared tokenizer interface serves both engines.
"""

from __future__ import annotations

import json
import threading
from typing import Iterable

import numpy as np

from inference_service.engine.types import Constraint
from inference_service.errors import InvalidRequest
from inference_service.limits import clip_utf8

_MAX_REASON_BYTES = 300  # of llguidance's own error message, quoted in ours
_ANY_JSON_OBJECT = '{"type": "object"}'
# JSON comes in one layout, json.dumps's (``{"a": 1, "b": [2, 3]}``): no token goes to
# whitespace, so a sampled run of spaces cannot eat max_tokens, and the separators and keys are
# forced runs the guide can append without sampling.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class _VocabularyBytes:
    """What llguidance's TokenizerWrapper reads: each token's bytes (control tokens marked
    with a leading 0xFF, its convention for special tokens) and a text tokenizer."""

    def __init__(self, tokenizer, end_of_turn_ids: Iterable[int]):
        self.eos_token_id = min(end_of_turn_ids)
        self.bos_token_id = tokenizer.vocab.bos_token_id
        self.special_token_ids = sorted(tokenizer.special_ids)
        self.tokens = [
            b"\xff" + tokenizer.vocab.tokens[i].encode("utf-8") if i in tokenizer.special_ids
            else tokenizer.token_bytes(i)
            for i in range(tokenizer.vocab_size)
        ]
        self._tokenizer = tokenizer

    def __call__(self, text) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode_text(text)


class GrammarTokenizer:
    """A model's vocabulary as llguidance needs it (built once per model, on first use)."""

    def __init__(self, tokenizer, end_of_turn_ids: Iterable[int]):
        import llguidance

        end_of_turn = sorted(end_of_turn_ids)
        self.llguidance = llguidance
        self.tokenizer = llguidance.LLTokenizer(
            llguidance.TokenizerWrapper(_VocabularyBytes(tokenizer, end_of_turn)), eos_token=end_of_turn)
        self.vocab_size = tokenizer.vocab_size

    def check(self, grammar: str, param: str) -> None:
        """InvalidRequest naming ``param``, with llguidance's reason, if the grammar is unusable."""
        error = self.llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            reason = clip_utf8(error.strip(), _MAX_REASON_BYTES)
            raise InvalidRequest(f"{param} could not be compiled into a grammar: {reason}", param)

    def guide(self, grammar: str) -> "Guide":
        return Guide(self.llguidance.LLMatcher(self.tokenizer, grammar), self.vocab_size)


class Guide:
    """One generation's grammar state."""

    def __init__(self, matcher, vocab_size: int):
        self._matcher = matcher
        self._vocab_size = vocab_size

    def mask(self, logits: np.ndarray) -> None:
        """Sets the logits of every token the grammar forbids next to -inf, in place."""
        allowed = np.frombuffer(self._matcher.compute_logit_bias(), dtype=np.uint8)[: self._vocab_size]
        logits[: len(allowed)][allowed == 0] = -np.inf

    def accept(self, token_id: int) -> None:
        if not self._matcher.consume_token(token_id):
            # Only a token the mask allowed is ever sampled: an error here is ours.
            raise RuntimeError(f"the grammar refused token {token_id}: {self._matcher.get_error()}")

    def forced_tokens(self) -> list[int]:
        """The tokens of the only continuation the grammar allows from here (may be none):
        they need no sampling (jump-forward)."""
        return self._matcher.compute_ff_tokens()

    def accept_text_tokens(self, token_ids: list[int]) -> bool:
        """Feeds tokens the model produced before the grammar started (see tool calls)."""
        return self._matcher.try_consume_tokens(token_ids) == len(token_ids)

    @property
    def complete(self) -> bool:
        """The grammar allows nothing more: the output is whole."""
        return self._matcher.is_stopped()


def constraint_grammar(constraint: Constraint) -> str:
    """The llguidance grammar of a request's constraint (not yet checked: ``check`` does)."""
    from llguidance import LLMatcher

    if constraint.kind == "json_object":
        return LLMatcher.grammar_from_json_schema(_ANY_JSON_OBJECT, defaults=JSON_LAYOUT)
    if constraint.kind == "json_schema":
        return LLMatcher.grammar_from_json_schema(_json_object(constraint.source, constraint.param),
                                                  defaults=JSON_LAYOUT)
    if constraint.kind == "regex":
        return LLMatcher.grammar_from_regex(constraint.source)
    if constraint.kind == "gbnf":
        return LLMatcher.grammar_from_lark(_gbnf_as_lark(constraint.source, constraint.param))
    return LLMatcher.grammar_from_lark(constraint.source)


def _gbnf_as_lark(text: str, param: str) -> str:
    """llama.cpp's GBNF as llguidance's Lark (llguidance's own converter)."""
    from llguidance.gbnf_to_lark import gbnf_to_lark

    try:
        return gbnf_to_lark(text)
    except Exception as exc:  # noqa: BLE001 - the converter raises plain exceptions on bad GBNF
        reason = clip_utf8(str(exc).strip() or type(exc).__name__, _MAX_REASON_BYTES)
        raise InvalidRequest(f"{param} is not a valid GBNF grammar: {reason}", param) from None


def _json_object(text: str, param: str) -> str:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"{param} is not valid JSON: {exc}", param) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be a JSON object (a JSON schema)", param)
    return text


class LazyGrammarTokenizer:
    """Builds the model's GrammarTokenizer on the first constrained request (about 0.1 s for
    a 49k vocabulary, 1 s for 262k), once, whatever the number of threads asking."""

    def __init__(self, tokenizer, end_of_turn_ids: Iterable[int]):
        self._args = (tokenizer, frozenset(end_of_turn_ids))
        self._value: GrammarTokenizer | None = None
        self._lock = threading.Lock()

    def get(self) -> GrammarTokenizer:
        with self._lock:
            if self._value is None:
                self._value = GrammarTokenizer(*self._args)
            return self._value

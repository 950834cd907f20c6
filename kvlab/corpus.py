"""The hello model's training text, written by this project: short sentences about the course's own subject.

Every line that starts with "h" starts with "hello", so a model that has learned the text continues the prompt "h"
into "hello"; the other lines teach it enough words ("cache", "query", "prefill", ...) that it completes those too.
The corpus is generated from a seed, so it is the same on every machine and never downloaded.
"""

from __future__ import annotations

import random

from .checks import check_int

__all__ = ["make_corpus", "HELLO_LINE_SHARE"]

HELLO_LINE_SHARE = 0.3  # the share of lines that begin with "hello"

_GREETED = ["world", "there", "again", "friend", "cache", "model", "class", "reader"]
_SUBJECTS = ["the cache", "the model", "each layer", "every head", "the prompt", "a new token", "the query",
             "the decoder", "attention", "the server"]
_VERBS = ["stores", "reads", "keeps", "reuses", "writes", "grows with", "looks at", "skips", "saves", "needs"]
_OBJECTS = ["keys and values", "the past", "one more token", "every key", "the whole prompt", "old values",
            "the next word", "its own query", "memory", "time"]
_FACTS = [
    "prefill reads the whole prompt at once",
    "decode writes one token at a time",
    "a query is used once and never stored",
    "keys and values are stored in the cache",
    "without a cache every step starts over",
    "with a cache each step adds one key and one value",
    "the cache trades memory for time",
]


def _sentence(rng: random.Random) -> str:
    roll = rng.random()
    if roll < HELLO_LINE_SHARE:
        return f"hello {rng.choice(_GREETED)}"
    if roll < HELLO_LINE_SHARE + 0.2:
        return rng.choice(_FACTS)
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"


def make_corpus(n_lines: int = 4000, seed: int = 0) -> list[str]:
    """`n_lines` sentences, one per line, the same for the same seed."""
    check_int("n_lines", n_lines, minimum=1)
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(n_lines)]

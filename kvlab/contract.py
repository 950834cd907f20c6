"""The contract every `kvlab.Cache` keeps, as checks that say in words what went wrong.

One set of checks serves two users: the test suite runs them over every cache kvlab ships
(tests/test_cache_contract.py), and a learner runs them over a cache they wrote (`kvlab.notebook.check_cache`). So
"one contract every cache passes" exists once, and a learner's cache is held to the same rules as kvlab's.

Each check drives a cache on a tiny random `TinyGPT` (2 layers, 32 wide) and raises `ContractFailure` when the
cache breaks a rule. The failure names the check, what was expected, what the cache did, and a hint: a learner reads
it as printed text, pytest shows it as the assertion message. The checks:

- `check_update`: `update` hands back what the cache claims to hold (every token, or a budget of them, the newest
  last, the values with their own keys), `get_seq_length` counts every token fed, and `nbytes` is right;
- `check_logits`: the model's logits with the cache are those without one (a lossless cache), or those with the
  cache it claims to behave like (a lossy one, e.g. a sliding window against kvlab's `SlidingWindowCache`);
- `check_reset`: `reset` forgets every token;
- `check_reorder`: `reorder_cache` moves batch rows as beam search needs, and forgets nothing.

Design choices where the issue is silent: what a cache promises is a `Spec` (how to build it; for a lossy cache the
tokens it keeps and, optionally, a kvlab cache it must match exactly); a cache that states no byte formula must hold
at least the K/V bytes of the tokens it keeps. Misuse (wrong dtypes, shapes, indices) is not checked here: kvlab's
caches share validation helpers that the test file checks directly, and a learner's cache need not validate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import memory
from .cache import Cache
from .model import GPTConfig, TinyGPT

__all__ = ["ContractFailure", "Spec", "CONFIGS", "BATCH", "CHECKS", "full_bytes", "check_update", "check_logits",
           "check_reset", "check_reorder", "kv", "update", "run", "decode", "tokens", "model_for"]

BATCH = 3
CONFIGS = {name: GPTConfig(vocab_size=37, n_layer=2, n_head=4, n_kv_head=n_kv_head, d_model=32, max_seq_len=64)
           for name, n_kv_head in (("mha", 4), ("gqa", 2), ("mqa", 1))}
LAYOUTS = {"mha": "4 query heads, each with its own K/V head", "gqa": "4 query heads sharing 2 K/V heads",
           "mqa": "4 query heads sharing 1 K/V head"}
CHUNKS = (3, 1, 4, 1, 2, 1, 1)  # a prefill, decode steps and chunks: 13 tokens, more than a small budget
LONG_PROMPT = (11, 1, 1)  # a prompt longer than a small budget, then decode steps
TOLERANCE = 1e-5


class ContractFailure(AssertionError):
    """A cache broke a rule of the contract: which check, what was expected, what the cache did, and a hint."""

    def __init__(self, check: str, expected: str, got: str, hint: str = "") -> None:
        self.check, self.expected, self.got, self.hint = check, expected, got, hint
        lines = [f"Check failed: {check}", f"  expected: {expected}", f"  your cache: {got}"]
        super().__init__("\n".join(lines + ([f"  hint: {hint}"] if hint else [])))


def _keep_all(seen: int) -> int:
    return seen


@dataclass(frozen=True)
class Spec:
    """What a cache promises: how to build an empty one, and what it holds after `seen` tokens.

    `make(config, batch_size)` builds an empty cache. A lossless cache holds every token. A lossy cache says how many
    tokens it holds between calls (`kept`), or how far each number may move (`error`, with the `exact_newest` tokens
    kept exact); `reference`, when given, builds a kvlab cache whose returned K/V and logits it must equal.
    """

    make: Callable[[GPTConfig, int], Cache]
    nbytes: Callable[[GPTConfig, int, int], int] | None = None  # (config, batch, seen) -> bytes; None: >= K/V held
    lossless: bool = True
    kept: Callable[[int], int] = _keep_all  # tokens held between calls after `seen` tokens
    exact_newest: int | None = None  # lossy-by-value caches: how many of the newest tokens stay exact
    error: Callable[[torch.Tensor], float] | None = None  # lossy-by-value: the largest |returned - fed|
    reference: Callable[[GPTConfig, int], Cache] | None = None  # a cache it must behave exactly like
    configs: tuple[str, ...] = ("mha", "gqa", "mqa")  # the attention layouts it can serve


def full_bytes(config: GPTConfig, batch_size: int, seq_len: int) -> int:
    """K and V of `seq_len` tokens in every layer, fp32: chapter 6's formula."""
    return memory.kv_cache_bytes(config.n_layer, batch_size, seq_len, config.d_model, 4, n_head=config.n_head,
                                 n_kv_head=config.n_kv_head)


# --- driving a cache by hand ---

def model_for(config_name: str, seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(CONFIGS[config_name]).eval()


def kv(config: GPTConfig, n: int, generator: torch.Generator, batch_size: int = BATCH, head_dim: int | None = None,
       dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random keys and values (B, H_kv, n, D) for `n` new tokens."""
    shape = (batch_size, config.n_kv_head, n, head_dim or config.head_dim)
    return torch.randn(shape, generator=generator).to(dtype), torch.randn(shape, generator=generator).to(dtype)


def update(cache: Cache, key: torch.Tensor, value: torch.Tensor, layer_idx, config: GPTConfig):
    """`cache.update`, after handing the queries to a cache that scores tokens by attention (`record_queries`)."""
    if hasattr(cache, "record_queries"):
        q = torch.randn(key.shape[0], config.n_head, *key.shape[2:], generator=torch.Generator().manual_seed(9))
        q = q.to(key.dtype) if key.is_floating_point() else q
        cache.record_queries(q, layer_idx if type(layer_idx) is int and layer_idx >= 0 else 0)
    return cache.update(key, value, layer_idx)


def run(model: TinyGPT, idx: torch.Tensor, cache: Cache | None) -> torch.Tensor:
    """`model(idx, cache)`, attached for the call if the cache reads the model's queries."""
    attach = cache.attach(model) if hasattr(cache, "attach") else contextlib.nullcontext()
    with torch.inference_mode(), attach:
        return model(idx, cache)


def decode(model: TinyGPT, cache: Cache, prompt: torch.Tensor, steps: list[torch.Tensor]) -> torch.Tensor:
    """Prefill `prompt`, then feed each (B, 1) token of `steps`; the logits of every step, (B, len(steps), vocab)."""
    run(model, prompt, cache)
    return torch.cat([run(model, token, cache) for token in steps], dim=1)


def tokens(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(37, shape, generator=torch.Generator().manual_seed(seed))


def _describe(cache: Cache) -> str:
    """`SlidingWindowCache(window=8)`: how a kvlab cache is named in a message."""
    names = ("window", "n_sink") if hasattr(cache, "window") else ("budget", "n_recent")  # window is the budget
    settings = ", ".join(f"{k}={getattr(cache, k)}" for k in names if hasattr(cache, k))
    return f"{type(cache).__name__}({settings})"


def _where(config_name: str) -> str:
    return f"(a 2-layer model with {LAYOUTS[config_name]}, batch of {BATCH})"


# --- check 1: update, get_seq_length and nbytes agree with what the cache claims to hold ---

def check_update(spec: Spec, config_name: str = "gqa") -> None:
    """Feed random K/V in chunks (3, 1, 4, 1, 2, 1, 1) to every layer; after each call check what `update` returned.

    A cache compared with a reference (a sliding window, sinks...) is fed a second text too, whose first call is
    longer than a small budget (11 tokens, then decode steps): evicting on the decode path only, and not after a
    long prompt, is a mistake the short chunks never show.
    """
    config = CONFIGS[config_name]
    _feed(spec, config, config_name, CHUNKS)
    if spec.reference is not None:
        _feed(spec, config, config_name, LONG_PROMPT)


def _feed(spec: Spec, config: GPTConfig, config_name: str, chunks: tuple[int, ...]) -> None:
    """One text fed to a fresh cache in `chunks`, every call's result and the bytes held checked as it goes."""
    generator = torch.Generator().manual_seed(2)
    cache = spec.make(config, BATCH)
    reference = spec.reference(config, BATCH) if spec.reference else None
    fed_k, fed_v = [[] for _ in range(config.n_layer)], [[] for _ in range(config.n_layer)]
    seen = 0
    for n_new in chunks:
        for layer in range(config.n_layer):
            key, value = kv(config, n_new, generator)
            fed_k[layer].append(key)
            fed_v[layer].append(value)
            returned = update(cache, key, value, layer, config)
            expected = None
            if reference is not None:
                expected = (*update(reference, key.clone(), value.clone(), layer, config), _describe(reference))
            _check_returned(spec, config, config_name, cache, returned, expected, torch.cat(fed_k[layer], dim=2),
                            torch.cat(fed_v[layer], dim=2), layer, seen, n_new)
        seen += n_new
        _check_nbytes(spec, config, cache, reference, seen)
    limit = cache.get_max_cache_shape()
    allowed = {None, config.max_seq_len, spec.kept(10**6)} | ({reference.get_max_cache_shape()} if reference else set())
    if limit not in allowed:
        raise ContractFailure("get_max_cache_shape()", f"one of {sorted(allowed, key=str)}", f"returned {limit!r}",
                              "return the most tokens the cache can hold, or None when it grows without bound")


def _check_returned(spec, config, config_name, cache, returned, expected, all_k, all_v, layer, seen, n_new) -> None:
    """What one `update` call returned: counts, shapes, the newest tokens last, values with their keys."""
    total = seen + n_new
    fed = f"after feeding {total} tokens to layer {layer} (the last {n_new} in this call) {_where(config_name)}"
    length = cache.get_seq_length(layer)
    if length != total:
        lossy = "" if spec.lossless else ", including evicted ones"
        raise ContractFailure(f"get_seq_length({layer})", f"{total}, the number of tokens fed",
                              f"returned {length!r} {fed}",
                              f"it should count every token fed{lossy}: the model uses it as the next token's position")
    if not (isinstance(returned, tuple) and len(returned) == 2 and all(isinstance(t, torch.Tensor) for t in returned)):
        raise ContractFailure("update(key, value, layer_idx)", "a tuple (keys, values) of two tensors",
                              f"returned {type(returned).__name__} {fed}",
                              "end update with `return keys, values`: everything attention should look at")
    keys, values = returned
    held = expected[0].shape[2] if expected is not None else spec.kept(seen) + n_new
    shape = (BATCH, config.n_kv_head, held, config.head_dim)
    for name, t in (("keys", keys), ("values", values)):
        if tuple(t.shape) != shape:
            raise ContractFailure("update(key, value, layer_idx)", f"{name} of shape (B, H_kv, T, D) = {shape}",
                                  f"returned {name} of shape {tuple(t.shape)} {fed}", _shape_hint(spec, t, shape))
    _check_values_follow_keys(keys, values, all_k, all_v, fed)
    newest = n_new if spec.exact_newest is None else min(n_new, spec.exact_newest)
    if not torch.equal(keys[:, :, held - newest:], all_k[:, :, total - newest:]):
        raise ContractFailure("update(key, value, layer_idx)", f"the {newest} new keys of this call as the last keys",
                              f"returned other last keys {fed}",
                              "append the new tokens after the ones held: the causal mask expects them last")
    if expected is not None:
        if not (torch.equal(keys, expected[0]) and torch.equal(values, expected[1])):
            kept = _positions(keys, all_k)
            raise ContractFailure("update(key, value, layer_idx)", f"the keys {expected[2]} returns: "
                                  f"tokens {_positions(expected[0], all_k)} of the text",
                                  f"returned tokens {kept} {fed}", _which_tokens_hint(expected[2]))
    elif spec.error is not None:
        worst, allowed = (keys - all_k).abs().max().item(), spec.error(all_k)
        if worst > allowed:
            raise ContractFailure("update(key, value, layer_idx)", f"every key within {allowed:.3g} of the one fed",
                                  f"returned a key {worst:.3g} away {fed}")
    else:
        _check_subsequence(spec, keys, all_k, fed)
        if spec.lossless and not (torch.equal(keys, all_k) and torch.equal(values, all_v)):  # every row and head
            raise ContractFailure("update(key, value, layer_idx)", "every key and value fed, in every batch row and "
                                  "head", f"returned other numbers in some row or head {fed}",
                                  "store the whole (B, H_kv, T, D) tensors, not one row or head")


def _which_tokens_hint(reference: str) -> str:
    if reference.startswith("SlidingWindowCache"):
        return "keep the newest tokens and drop the oldest"
    return f"hold the tokens {reference} holds: compare the two lists of positions"


def _shape_hint(spec: Spec, t: torch.Tensor, shape: tuple[int, ...]) -> str:
    if t.dim() == 4 and t.shape[2] != shape[2]:
        if spec.lossless:
            return ("return every key and value fed so far for this layer, the past and the new tokens together "
                    "(torch.cat along dim 2)")
        return "return the tokens held plus the new ones; evict only what is beyond the budget"
    return "keep the (B, H_kv, T, D) layout: concatenate along dim 2, the token axis"


def _positions(keys: torch.Tensor, all_k: torch.Tensor) -> list[int]:
    """Where in the text each returned key (batch row 0, head 0) was fed; -1 for a key that was never fed."""
    distance = torch.cdist(keys[0, 0].float(), all_k[0, 0].float())
    return [p if d == 0 else -1 for d, p in zip(distance.min(dim=1).values.tolist(), distance.argmin(dim=1).tolist())]


def _check_values_follow_keys(keys, values, all_k, all_v, fed: str) -> None:
    """Each returned value must be the value fed with the key at the same slot (values often swap with keys)."""
    positions = _positions(keys, all_k)
    if -1 in positions:
        return  # a key that was never fed: the subsequence check explains it better
    index = torch.tensor(positions)
    if torch.allclose(values[0, 0], all_v[0, 0, index], atol=TOLERANCE, rtol=0):
        return
    hint = "store each value with its key, in the same slot and order"
    wrong = next(i for i in range(len(positions))
                 if not torch.allclose(values[0, 0, i], all_v[0, 0, positions[i]], atol=TOLERANCE, rtol=0))
    if torch.equal(values[0, 0, wrong], all_k[0, 0, positions[wrong]]):
        hint = "that value is one of the keys fed: follow what update stores in the values, branch by branch"
    raise ContractFailure("update(key, value, layer_idx)", "each returned value is the value fed with its key",
                          f"returned, for the token at position {positions[wrong]}, a value that is not its own {fed}",
                          hint)


def _check_subsequence(spec: Spec, keys: torch.Tensor, all_k: torch.Tensor, fed: str) -> None:
    """Exact caches: the returned keys are tokens of the text, in order; a lossless cache returns all of them."""
    positions = _positions(keys, all_k)
    if -1 in positions:
        raise ContractFailure("update(key, value, layer_idx)", "keys that were fed, unchanged",
                              f"returned a key that was never fed {fed}", "store the tensors you are given")
    if any(b <= a for a, b in zip(positions, positions[1:])):
        raise ContractFailure("update(key, value, layer_idx)", "the tokens in the order they were fed",
                              f"returned tokens {positions} {fed}", "concatenate the new tokens after the old")
    if spec.lossless and positions != list(range(all_k.shape[2])):
        raise ContractFailure("update(key, value, layer_idx)", f"all {all_k.shape[2]} tokens fed, in order",
                              f"returned tokens {positions} {fed}", "a lossless cache forgets nothing")


def _check_nbytes(spec: Spec, config: GPTConfig, cache: Cache, reference: Cache | None, seen: int) -> None:
    got = cache.nbytes
    if spec.nbytes is not None or reference is not None:
        expected = reference.nbytes if reference is not None else spec.nbytes(config, BATCH, seen)
        if got != expected:
            raise ContractFailure("nbytes", f"{expected:,} bytes after {seen} tokens", f"said {got!r}",
                                  _nbytes_hint(config, reference, got))
        return
    least = full_bytes(config, BATCH, spec.kept(seen))
    if not isinstance(got, int) or got < least:
        raise ContractFailure("nbytes", f"at least {least:,} bytes: the K and V of the {spec.kept(seen)} tokens held "
                              f"after {seen} fed", f"said {got!r}",
                              "sum .nbytes over every K and V tensor the cache holds (a property, an int)")


def _nbytes_hint(config: GPTConfig, reference: Cache | None, got: object) -> str:
    """Wrong bytes usually mean the wrong number of tokens held: say both counts when the bytes tell them."""
    per_token = full_bytes(config, BATCH, 1)
    if reference is not None and isinstance(got, int) and got % per_token == 0:
        return (f"{_describe(reference)} holds {reference.nbytes // per_token} tokens per layer after this call, "
                f"your cache's bytes are those of {got // per_token}: check how many tokens update keeps")
    return "sum .nbytes over every K and V tensor the cache holds"


# --- check 2: the model computes what it should with the cache ---

def check_logits(spec: Spec, config_name: str = "gqa", n_decode: int = 8) -> None:
    """Prefill 5 tokens, then decode `n_decode` greedily: every step's logits equal those without a cache (lossless)
    or with the reference cache (lossy). Lossy caches without a reference are checked by `check_update` alone."""
    if not spec.lossless and spec.reference is None:
        return
    model, config = model_for(config_name), CONFIGS[config_name]
    cache = spec.make(config, BATCH)
    reference = spec.reference(config, BATCH) if spec.reference else None
    against = f"with {_describe(reference)}" if reference else "without a cache"
    sequence = tokens((BATCH, 5), seed=1)
    for step in range(n_decode + 1):
        fed = sequence if step == 0 else sequence[:, -1:]
        got = run(model, fed, cache)
        want = run(model, fed, reference) if reference else run(model, sequence, None)[:, -fed.shape[1]:]
        if not torch.allclose(got, want, atol=TOLERANCE, rtol=TOLERANCE):
            when = "on the 5-token prompt" if step == 0 else f"at decode step {step} (token {sequence.shape[1]})"
            gap = (got - want).abs().max().item() if got.shape == want.shape else "shape"
            raise ContractFailure("the model's logits with your cache",
                                  f"the logits the model computes {against} (within {TOLERANCE})",
                                  f"gave other logits {when}, largest difference {gap} {_where(config_name)}",
                                  "run check_update first: it says which tokens update hands back")
        if step < n_decode:
            sequence = torch.cat([sequence, got[:, -1:].argmax(-1)], dim=1)
    if cache.get_seq_length() != sequence.shape[1]:
        raise ContractFailure("get_seq_length()", f"{sequence.shape[1]} after the generation",
                              f"returned {cache.get_seq_length()!r}")


# --- check 3: reset forgets every token ---

def check_reset(spec: Spec, config_name: str = "gqa") -> None:
    """Decode, reset, decode again: every layer's length back to 0, and the second run equals the first."""
    config, model = CONFIGS[config_name], model_for(config_name)
    cache = spec.make(config, BATCH)
    prompt, steps = tokens((BATCH, 8), seed=3), [tokens((BATCH, 1), seed=4 + i) for i in range(3)]
    first = decode(model, cache, prompt, steps)
    cache.reset()
    lengths = [cache.get_seq_length(layer) for layer in range(config.n_layer)]
    if lengths != [0] * config.n_layer:
        raise ContractFailure("reset()", "get_seq_length(layer) == 0 for every layer after reset()",
                              f"gave lengths {lengths} for layers {list(range(config.n_layer))}",
                              "clear every layer's keys, values and counters, not only layer 0's")
    expected_bytes = spec.nbytes(config, BATCH, 0) if spec.nbytes else 0
    if spec.nbytes and cache.nbytes != expected_bytes:
        raise ContractFailure("reset()", f"nbytes == {expected_bytes:,} after reset()", f"said {cache.nbytes!r}")
    again = decode(model, cache, prompt, steps)
    if not torch.allclose(again, first, atol=1e-6, rtol=0):
        raise ContractFailure("reset()", "after reset(), the same logits as a new cache gives",
                              f"gave other logits {_where(config_name)}",
                              "something of the old text survived reset(): clear every list and counter")


# --- check 4: reorder_cache moves rows, and forgets nothing ---

def check_reorder(spec: Spec, config_name: str = "gqa") -> None:
    """After reorder_cache(beam_idx), row i continues row beam_idx[i]; then a permutation and its inverse: no change."""
    config, model = CONFIGS[config_name], model_for(config_name)
    prompt, steps = tokens((BATCH, 8), seed=5), [tokens((BATCH, 1), seed=6 + i) for i in range(4)]
    for beam_idx in ([2, 0, 1], [1, 1, 0]):
        beam_idx = torch.tensor(beam_idx)
        cache = spec.make(config, BATCH)
        run(model, prompt, cache)
        cache.reorder_cache(beam_idx)
        logits = torch.cat([run(model, token, cache) for token in steps], dim=1)
        expected = decode(model, spec.make(config, BATCH), prompt[beam_idx], steps)
        if not torch.allclose(logits, expected, atol=TOLERANCE, rtol=TOLERANCE):
            raise ContractFailure(f"reorder_cache(torch.tensor({beam_idx.tolist()}))",
                                  f"row i continues the text of row beam_idx[i], as if rows {beam_idx.tolist()} had "
                                  "been fed", f"gave other logits afterwards {_where(config_name)}",
                                  "index_select(0, beam_idx) every layer's keys AND values (beam search relies on it)")
        if cache.get_seq_length() != 8 + len(steps):
            raise ContractFailure("reorder_cache", f"get_seq_length() == {8 + len(steps)} after reordering and "
                                  f"{len(steps)} more steps", f"returned {cache.get_seq_length()!r}",
                                  "reordering moves rows; it neither adds nor drops tokens")
    permutation = torch.tensor([1, 2, 0])
    cache = spec.make(config, BATCH)
    run(model, prompt, cache)
    cache.reorder_cache(permutation)
    cache.reorder_cache(permutation.argsort())
    logits = torch.cat([run(model, token, cache) for token in steps], dim=1)
    if not torch.allclose(logits, decode(model, spec.make(config, BATCH), prompt, steps), atol=1e-6, rtol=0):
        raise ContractFailure("reorder_cache twice", "a permutation, then its inverse, changes nothing",
                              f"gave other logits afterwards {_where(config_name)}")


CHECKS: dict[str, Callable[[Spec, str], None]] = {
    "update": check_update, "logits": check_logits, "reset": check_reset, "reorder_cache": check_reorder,
}

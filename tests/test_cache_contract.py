"""The contract every `kvlab.Cache` keeps, run over a registry of every cache kvlab ships.

Adding a cache means adding one line to `REGISTRY`: a factory ``(config, batch_size) -> empty cache``, the bytes it
must hold after T tokens, and, for a lossy cache, what it claims to keep. `test_registry_lists_every_cache_kvlab_ships`
fails when a concrete `Cache` subclass in the package has no line. Every entry then runs the same behaviours:

- lossless caches give the logits of the model without a cache (prefill, then decode steps; GQA and MQA too);
- every cache holds what it claims: the bytes of its formula, the tokens of its budget, the newest tokens last and
  exact, and (quantised) every value within its stated error;
- `update`, `get_seq_length`, `reorder_cache`, `reset` and `nbytes` agree with each other;
- misuse raises the same exception, whatever the cache.

What only one cache does (which tokens a sink cache keeps, copy-on-write of shared blocks, ...) is tested in the
cache's own test file.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import kvlab
from kvlab import memory
from kvlab.cache import Cache, DynamicCache, StaticCache
from kvlab.compressed_cache import HeavyHitterCache, QuantizedCache, SinkCache, SlidingWindowCache
from kvlab.fastgen import FastGenCache
from kvlab.measure import CopyCountingCache
from kvlab.paged_cache import BlockPool, PagedCache
from kvlab.serving import HeadSplitCache

BATCH = 3
BLOCK_SIZE = 4
BUDGET = 6  # the eviction caches' budget: the tests feed more tokens than that, so they do evict


def full_bytes(config: kvlab.GPTConfig, batch_size: int, seq_len: int) -> int:
    """K and V of every token in every layer, fp32: chapter 6's formula."""
    return memory.kv_cache_bytes(config.n_layer, batch_size, seq_len, config.d_model, 4, n_head=config.n_head,
                                 n_kv_head=config.n_kv_head)


def quantized_bytes(bits: int) -> Callable[[kvlab.GPTConfig, int, int], int]:
    return lambda c, B, T: memory.quantized_kv_cache_bytes(c.n_layer, B, T, c.n_kv_head, c.head_dim, bits,
                                                           group_size=4, residual_length=2, float_bytes=4)


def quantization_error(bits: int) -> Callable[[torch.Tensor], float]:
    """`quantize`'s promise: within half a step, scale / 2, of a slice whose range is at most the whole tensor's."""
    return lambda fed: (fed.max() - fed.min()).item() / (2 * (2**bits - 1)) + 1e-6


def paged(config: kvlab.GPTConfig, batch_size: int) -> PagedCache:
    blocks_per_row = math.ceil(config.max_seq_len / BLOCK_SIZE)
    return PagedCache(BlockPool(config, n_blocks=2 * batch_size * blocks_per_row, block_size=BLOCK_SIZE))


@dataclass(frozen=True)
class Entry:
    """One cache in the contract: how to build it, and what it promises to hold."""

    cls: type[Cache]
    make: Callable[[kvlab.GPTConfig, int], Cache]  # (config, batch_size) -> an empty cache
    nbytes: Callable[[kvlab.GPTConfig, int, int], int]  # (config, batch_size, tokens seen) -> bytes held
    lossless: bool = True
    kept: Callable[[int], int] = lambda seen: seen  # tokens held between calls after `seen` tokens
    exact_newest: int | None = None  # lossy-by-value caches: how many of the newest tokens stay exact
    error: Callable[[torch.Tensor], float] | None = None  # lossy-by-value: the largest |returned - fed|
    configs: tuple[str, ...] = ("mha", "gqa", "mqa")  # the attention layouts it can serve


REGISTRY: dict[str, Entry] = {
    "dynamic": Entry(DynamicCache, lambda c, B: DynamicCache(), full_bytes),
    "static": Entry(StaticCache, lambda c, B: StaticCache(c, B, c.max_seq_len),
                    lambda c, B, T: full_bytes(c, B, c.max_seq_len)),
    "quantized-8": Entry(QuantizedCache, lambda c, B: QuantizedCache(8, group_size=4, residual_length=2),
                         quantized_bytes(8), lossless=False, exact_newest=2, error=quantization_error(8)),
    "quantized-4": Entry(QuantizedCache, lambda c, B: QuantizedCache(4, group_size=4, residual_length=2),
                         quantized_bytes(4), lossless=False, exact_newest=2, error=quantization_error(4)),
    "quantized-2": Entry(QuantizedCache, lambda c, B: QuantizedCache(2, group_size=4, residual_length=2),
                         quantized_bytes(2), lossless=False, exact_newest=2, error=quantization_error(2)),
    "sliding-window": Entry(SlidingWindowCache, lambda c, B: SlidingWindowCache(BUDGET),
                            lambda c, B, T: full_bytes(c, B, min(T, BUDGET)), lossless=False,
                            kept=lambda T: min(T, BUDGET)),
    "sink": Entry(SinkCache, lambda c, B: SinkCache(BUDGET, n_sink=2), lambda c, B, T: full_bytes(c, B, min(T, BUDGET)),
                  lossless=False, kept=lambda T: min(T, BUDGET)),
    "heavy-hitter": Entry(HeavyHitterCache, lambda c, B: HeavyHitterCache(BUDGET, n_recent=2),
                          lambda c, B, T: full_bytes(c, B, min(T, BUDGET)), lossless=False,
                          kept=lambda T: min(T, BUDGET)),
    # FastGen: threshold 1 gives every head the full cache (lossless); a policy forced on every head (no profiling)
    # keeps the first token and a window, as a sink cache does. Profiled, heads hold different counts: test_fastgen.py
    "fastgen-full": Entry(FastGenCache, lambda c, B: FastGenCache(1.0), full_bytes),
    "fastgen-local": Entry(FastGenCache, lambda c, B: FastGenCache(policy="special+punct+frequent+local",
                                                                   window=BUDGET - 1, frequent=0),
                           lambda c, B, T: full_bytes(c, B, min(T, BUDGET)), lossless=False,
                           kept=lambda T: min(T, BUDGET)),
    "paged": Entry(PagedCache, paged, lambda c, B, T: B * math.ceil(T / BLOCK_SIZE) * full_bytes(c, 1, BLOCK_SIZE)),
    "head-split": Entry(HeadSplitCache, lambda c, B: HeadSplitCache(c, tp=2), full_bytes, configs=("mha", "gqa")),
    "copy-counting": Entry(CopyCountingCache, lambda c, B: CopyCountingCache(DynamicCache()), full_bytes),
}

CONFIGS = {name: kvlab.GPTConfig(vocab_size=37, n_layer=2, n_head=4, n_kv_head=n_kv_head, d_model=32, max_seq_len=64)
           for name, n_kv_head in (("mha", 4), ("gqa", 2), ("mqa", 1))}
CASES = [pytest.param(name, config, id=f"{name}-{config}") for name, entry in REGISTRY.items()
         for config in entry.configs]
OPTIONAL_DEPENDENCIES = {"transformers", "matplotlib", "ipywidgets", "IPython"}


# --- the registry is complete ---

def shipped_caches() -> set[type[Cache]]:
    """Every concrete `Cache` subclass defined in a kvlab module (modules needing a missing extra are skipped)."""
    found = set()
    for info in pkgutil.walk_packages(kvlab.__path__, "kvlab."):
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] in OPTIONAL_DEPENDENCIES:
                continue
            raise
        found |= {cls for _, cls in inspect.getmembers(module, inspect.isclass)
                  if issubclass(cls, Cache) and cls.__module__ == module.__name__ and not inspect.isabstract(cls)}
    return found


def test_registry_lists_every_cache_kvlab_ships():
    shipped = shipped_caches()
    missing = {cls.__qualname__ for cls in shipped} - {entry.cls.__qualname__ for entry in REGISTRY.values()}
    assert not missing, f"add a REGISTRY line for {sorted(missing)}"
    assert {DynamicCache, StaticCache, QuantizedCache, PagedCache, HeadSplitCache, CopyCountingCache} <= shipped


def test_a_cache_without_update_cannot_be_built():
    class NoUpdate(Cache):  # everything but `update`
        def get_seq_length(self, layer_idx=0):
            return 0

        def reorder_cache(self, beam_idx):
            pass

        def reset(self):
            pass

        nbytes = 0

    with pytest.raises(TypeError, match="update"):
        NoUpdate()
    with pytest.raises(TypeError, match="abstract"):
        Cache()


# --- driving a cache by hand ---

def model_for(config_name: str, seed: int = 0) -> kvlab.TinyGPT:
    torch.manual_seed(seed)
    return kvlab.TinyGPT(CONFIGS[config_name]).eval()


def kv(config: kvlab.GPTConfig, n: int, generator: torch.Generator, batch_size: int = BATCH,
       head_dim: int | None = None, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (batch_size, config.n_kv_head, n, head_dim or config.head_dim)  # (B, H_kv, T, D)
    return torch.randn(shape, generator=generator).to(dtype), torch.randn(shape, generator=generator).to(dtype)


def update(cache: Cache, key: torch.Tensor, value: torch.Tensor, layer_idx, config: kvlab.GPTConfig):
    """`cache.update`, after handing the queries to a cache that scores tokens by attention (`record_queries`)."""
    if hasattr(cache, "record_queries"):
        q = torch.randn(key.shape[0], config.n_head, *key.shape[2:], generator=torch.Generator().manual_seed(9))
        q = q.to(key.dtype) if key.is_floating_point() else q
        cache.record_queries(q, layer_idx if type(layer_idx) is int and layer_idx >= 0 else 0)
    return cache.update(key, value, layer_idx)


def run(model: kvlab.TinyGPT, idx: torch.Tensor, cache: Cache) -> torch.Tensor:
    """`model(idx, cache)`, attached for the call if the cache reads the model's queries."""
    with torch.inference_mode():
        if hasattr(cache, "attach"):
            with cache.attach(model):
                return model(idx, cache)
        return model(idx, cache)


def decode(model: kvlab.TinyGPT, cache: Cache, prompt: torch.Tensor, steps: list[torch.Tensor]) -> torch.Tensor:
    """Prefill `prompt`, then feed each (B, 1) token of `steps`; the logits of every step, (B, len(steps), vocab)."""
    run(model, prompt, cache)
    return torch.cat([run(model, token, cache) for token in steps], dim=1)


def tokens(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(37, shape, generator=torch.Generator().manual_seed(seed))


# --- lossless caches compute what the model computes without one ---

@pytest.mark.parametrize(("name", "config_name"), [case for case in CASES if REGISTRY[case.values[0]].lossless])
def test_lossless_cache_gives_the_uncached_logits(name, config_name):
    entry = REGISTRY[name]
    model, config = model_for(config_name), CONFIGS[config_name]
    cache = entry.make(config, BATCH)
    sequence = tokens((BATCH, 5), seed=1)
    with torch.inference_mode():
        torch.testing.assert_close(run(model, sequence, cache), model(sequence), atol=1e-5, rtol=1e-5)
        for _ in range(6):
            sequence = torch.cat([sequence, model(sequence)[:, -1:].argmax(-1)], dim=1)
            torch.testing.assert_close(run(model, sequence[:, -1:], cache), model(sequence)[:, -1:], atol=1e-5,
                                       rtol=1e-5)
    assert cache.get_seq_length() == sequence.shape[1]


# --- every cache holds what it claims, and update / get_seq_length / nbytes agree ---

@pytest.mark.parametrize(("name", "config_name"), CASES)
def test_update_returns_what_the_cache_claims_to_hold(name, config_name):
    entry, config = REGISTRY[name], CONFIGS[config_name]
    cache, generator = entry.make(config, BATCH), torch.Generator().manual_seed(2)
    fed = [[] for _ in range(config.n_layer)]  # per layer: the keys fed so far
    seen = 0
    for n_new in (3, 1, 4, 1, 2, 1, 1):  # prefill, decode steps, and chunks: 13 tokens, more than any budget
        for layer in range(config.n_layer):
            key, value = kv(config, n_new, generator)
            fed[layer].append(key)
            keys, values = update(cache, key, value, layer, config)
            assert cache.get_seq_length(layer) == seen + n_new  # tokens seen, whatever is held
            assert keys.shape == values.shape == (BATCH, config.n_kv_head, entry.kept(seen) + n_new, config.head_dim)
            all_keys = torch.cat(fed[layer], dim=2)
            newest = n_new if entry.exact_newest is None else min(n_new, entry.exact_newest)
            assert torch.equal(keys[:, :, keys.shape[2] - newest:], all_keys[:, :, all_keys.shape[2] - newest:])
            if entry.error is not None:  # quantised: every token held, each number within the stated error
                assert (keys - all_keys).abs().max().item() <= entry.error(all_keys)
            else:  # exact: a subsequence of the text, in order, the new tokens last
                distance = torch.cdist(keys[0, 0], all_keys[0, 0])  # (held, seen) for batch row 0, head 0
                assert bool((distance.min(dim=1).values == 0).all())
                positions = distance.argmin(dim=1)
                assert bool((positions[1:] > positions[:-1]).all())
                if entry.lossless:
                    assert torch.equal(keys, all_keys) and torch.equal(positions, torch.arange(seen + n_new))
        seen += n_new
        assert cache.nbytes == entry.nbytes(config, BATCH, seen)
    assert cache.get_max_cache_shape() in (None, config.max_seq_len, entry.kept(10**6))


@pytest.mark.parametrize("name", list(REGISTRY))
def test_reset_forgets_every_token(name):
    entry, config, model = REGISTRY[name], CONFIGS["gqa"], model_for("gqa")
    cache = entry.make(config, BATCH)
    prompt, steps = tokens((BATCH, 8), seed=3), [tokens((BATCH, 1), seed=4 + i) for i in range(3)]
    first = decode(model, cache, prompt, steps)
    cache.reset()
    assert [cache.get_seq_length(layer) for layer in range(config.n_layer)] == [0] * config.n_layer
    assert cache.nbytes == entry.nbytes(config, BATCH, 0)  # 0, or what is allocated up front
    torch.testing.assert_close(decode(model, cache, prompt, steps), first, atol=1e-6, rtol=0)  # like a new cache


# --- reorder_cache moves rows, and forgets nothing ---

@pytest.mark.parametrize("beam_idx", [[2, 0, 1], [1, 1, 0]], ids=["permutation", "beams"])
@pytest.mark.parametrize(("name", "config_name"), [case for case in CASES if case.values[1] != "mqa"])
def test_reorder_cache_equals_feeding_the_reordered_rows(name, config_name, beam_idx):
    """After reorder_cache(beam_idx), row i continues row beam_idx[i]: as if that row had been fed there."""
    entry, config, model = REGISTRY[name], CONFIGS[config_name], model_for(config_name)
    prompt, steps = tokens((BATCH, 8), seed=5), [tokens((BATCH, 1), seed=6 + i) for i in range(4)]
    beam_idx = torch.tensor(beam_idx)
    reordered = entry.make(config, BATCH)
    run(model, prompt, reordered)
    reordered.reorder_cache(beam_idx)
    logits = torch.cat([run(model, token, reordered) for token in steps], dim=1)
    expected = decode(model, entry.make(config, BATCH), prompt[beam_idx], steps)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert reordered.get_seq_length() == 8 + len(steps)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_reorder_then_its_inverse_restores_the_logits(name):
    entry, config, model = REGISTRY[name], CONFIGS["gqa"], model_for("gqa")
    prompt, steps = tokens((BATCH, 8), seed=7), [tokens((BATCH, 1), seed=8 + i) for i in range(3)]
    permutation = torch.tensor([1, 2, 0])
    cache = entry.make(config, BATCH)
    run(model, prompt, cache)
    cache.reorder_cache(permutation)
    cache.reorder_cache(permutation.argsort())
    logits = torch.cat([run(model, token, cache) for token in steps], dim=1)
    torch.testing.assert_close(logits, decode(model, entry.make(config, BATCH), prompt, steps), atol=1e-6, rtol=0)


# --- misuse raises the same errors, whatever the cache ---

@pytest.mark.parametrize("name", list(REGISTRY))
def test_misuse_raises_the_same_errors(name):
    entry, config = REGISTRY[name], CONFIGS["gqa"]
    cache, generator = entry.make(config, BATCH), torch.Generator().manual_seed(10)
    key, value = kv(config, 2, generator)
    for bad, error in ((kv(config, 2, generator, dtype=torch.long), TypeError),  # a layer's first tokens
                       (kv(config, 0, generator), ValueError), ((key, value[:, :, :1]), ValueError)):
        with pytest.raises(error, match="key"):
            update(cache, *bad, 0, config)
    update(cache, key, value, 0, config)
    for layer_idx, error in ((-1, ValueError), (99, ValueError), (True, TypeError), (0.0, TypeError)):
        with pytest.raises(error, match="layer_idx"):
            update(cache, key, value, layer_idx, config)
    for bad, error in ((kv(config, 1, generator, head_dim=2 * config.head_dim), ValueError),
                       (kv(config, 1, generator, batch_size=BATCH + 1), ValueError),
                       (kv(config, 1, generator, dtype=torch.float64), TypeError)):
        with pytest.raises(error, match="key"):
            update(cache, *bad, 0, config)
    assert cache.get_seq_length(0) == 2  # a refused update leaves the cache as it was
    for beam_idx, error in (([0, 1, 2], TypeError), (torch.tensor([0.0, 1.0, 2.0]), TypeError),
                            (torch.tensor([[0, 1, 2]]), ValueError), (torch.tensor([0, 1, BATCH]), ValueError),
                            (torch.tensor([0, -1, 2]), ValueError)):
        with pytest.raises(error, match="beam_idx"):
            cache.reorder_cache(beam_idx)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_values_that_do_not_match_the_keys_are_refused(name):
    """Not only the key is checked: a value of another length or dtype would be broadcast or stored misaligned."""
    entry, config = REGISTRY[name], CONFIGS["gqa"]
    cache, generator = entry.make(config, BATCH), torch.Generator().manual_seed(11)
    update(cache, *kv(config, 2, generator), 0, config)
    key, value = kv(config, 3, generator)
    for bad_value in (value[:, :, :1], value.double()):
        with pytest.raises((ValueError, TypeError), match="value"):
            update(cache, key, bad_value, 0, config)
    assert cache.get_seq_length(0) == 2


# --- a reused cache continues the text it was fed, or is refused, whoever fed it ---

def generate(model: kvlab.TinyGPT, idx: torch.Tensor, max_new_tokens: int, cache: Cache) -> torch.Tensor:
    """`kvlab.generate` with `cache`, attached for the call if the cache reads the model's queries."""
    if hasattr(cache, "attach"):
        with cache.attach(model):
            return kvlab.generate(model, idx, max_new_tokens, cache=cache)
    return kvlab.generate(model, idx, max_new_tokens, cache=cache)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_generate_checks_a_cache_the_model_filled(name):
    """Filled by model(idx, cache) (chapters 2 and 3), or one more token fed by hand: the record follows."""
    entry, config, model = REGISTRY[name], CONFIGS["gqa"], model_for("gqa")
    text = tokens((BATCH, 9), seed=12)
    cache = entry.make(config, BATCH)
    run(model, text[:, :6], cache)
    other = text.clone()
    other[:, 2] = (other[:, 2] + 1) % config.vocab_size
    with pytest.raises(ValueError, match="does not continue.*cache.reset"):
        generate(model, other, 3, cache)
    run(model, text[:, 6:7], cache)  # one more token by hand
    with pytest.raises(ValueError, match="does not continue"):
        generate(model, torch.cat([text[:, :6], (text[:, 6:] + 1) % config.vocab_size], dim=1), 3, cache)
    assert torch.equal(cache.token_ids, text[:, :7])
    continued = generate(model, text, 3, cache)
    assert torch.equal(continued[:, :9], text) and cache.get_seq_length() == 11
    if entry.lossless:
        assert torch.equal(continued, kvlab.generate(model, text, 3, use_cache=False))
    cache.reset()
    assert cache.token_ids is None
    generate(model, other, 3, cache)  # after a reset, any text


@pytest.mark.parametrize("name", list(REGISTRY))
def test_reorder_cache_moves_the_record_of_fed_tokens(name):
    entry, config, model = REGISTRY[name], CONFIGS["gqa"], model_for("gqa")
    text, beam_idx = tokens((BATCH, 8), seed=13), torch.tensor([2, 0, 0])
    cache = entry.make(config, BATCH)
    run(model, text[:, :6], cache)
    cache.reorder_cache(beam_idx)  # a learner's own call, not only beam_search's
    assert torch.equal(cache.token_ids, text[beam_idx, :6])
    with pytest.raises(ValueError, match="does not continue"):
        generate(model, text, 2, cache)
    generate(model, text[beam_idx], 2, cache)


INTERRUPT_CONFIG = kvlab.GPTConfig(vocab_size=37, n_layer=4, n_head=4, n_kv_head=2, d_model=32, max_seq_len=64)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("name", list(REGISTRY))
def test_an_update_interrupted_in_layer_2_leaves_no_half_written_cache(name, error, monkeypatch):
    """Ctrl-C (or any exception) after layers 0 and 1 took the new tokens: the layers still agree, and the cache
    continues the right text (a fresh cache's), instead of attending to lengths 8, 8, 7, 7."""
    entry, config = REGISTRY[name], INTERRUPT_CONFIG
    torch.manual_seed(0)
    model = kvlab.TinyGPT(config).eval()
    text = tokens((BATCH, 7), seed=14)
    cache = entry.make(config, BATCH)
    text = generate(model, text, 2, cache)  # the cache holds 8 tokens

    def interrupted(*args, **kwargs):
        raise error("interrupted in layer 2")

    with monkeypatch.context() as patch:
        patch.setattr(model.blocks[2], "forward", interrupted)
        with pytest.raises(error, match="layer 2"):
            run(model, text[:, -1:], cache)
    lengths = {cache.get_seq_length(layer) for layer in range(config.n_layer)}
    assert len(lengths) == 1 and lengths <= {0, 8}
    expected = generate(model, text, 4, entry.make(config, BATCH))
    assert torch.equal(generate(model, text, 4, cache), expected)

"""The contract every `kvlab.Cache` keeps, run over a registry of every cache kvlab ships.

Adding a cache means adding one line to `REGISTRY`: a `kvlab.contract.Spec` with a factory
``(config, batch_size) -> empty cache``, the bytes it must hold after T tokens, and, for a lossy cache, what it claims
to keep. `test_registry_lists_every_cache_kvlab_ships` fails when a concrete `Cache` subclass in the package has no
line. Every entry then runs the checks of `kvlab.contract` (the same ones `kvlab.notebook.check_cache` runs over a
learner's cache):

- lossless caches give the logits of the model without a cache (prefill, then decode steps; GQA and MQA too);
- every cache holds what it claims: the bytes of its formula, the tokens of its budget, the newest tokens last and
  exact, each value with its key, and (quantised) every value within its stated error;
- `update`, `get_seq_length`, `reorder_cache`, `reset` and `nbytes` agree with each other.

This file adds what only kvlab's caches promise: misuse raises the same exception whatever the cache, the record of
fed tokens follows the cache, and an interrupted update leaves no half-written cache. What only one cache does (which
tokens a sink cache keeps, copy-on-write of shared blocks, ...) is tested in the cache's own test file.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from collections.abc import Callable

import pytest
import torch

import kvlab
from kvlab import contract, memory
from kvlab.cache import Cache, DynamicCache, StaticCache
from kvlab.compressed_cache import HeavyHitterCache, QuantizedCache, SinkCache, SlidingWindowCache
from kvlab.contract import BATCH, CONFIGS, Spec, full_bytes, kv, model_for, run, tokens, update
from kvlab.fastgen import FastGenCache
from kvlab.measure import CopyCountingCache
from kvlab.paged_cache import BlockPool, PagedCache
from kvlab.serving import HeadSplitCache

BLOCK_SIZE = 4
BUDGET = 6  # the eviction caches' budget: the tests feed more tokens than that, so they do evict


def quantized_bytes(bits: int) -> Callable[[kvlab.GPTConfig, int, int], int]:
    return lambda c, B, T: memory.quantized_kv_cache_bytes(c.n_layer, B, T, c.n_kv_head, c.head_dim, bits,
                                                           group_size=4, residual_length=2, float_bytes=4)


def quantization_error(bits: int) -> Callable[[torch.Tensor], float]:
    """`quantize`'s promise: within half a step, scale / 2, of a slice whose range is at most the whole tensor's."""
    return lambda fed: (fed.max() - fed.min()).item() / (2 * (2**bits - 1)) + 1e-6


def paged(config: kvlab.GPTConfig, batch_size: int) -> PagedCache:
    blocks_per_row = math.ceil(config.max_seq_len / BLOCK_SIZE)
    return PagedCache(BlockPool(config, n_blocks=2 * batch_size * blocks_per_row, block_size=BLOCK_SIZE))


def window_bytes(c: kvlab.GPTConfig, B: int, T: int) -> int:
    return full_bytes(c, B, min(T, BUDGET))


def within_budget(seen: int) -> int:
    return min(seen, BUDGET)


REGISTRY: dict[str, Spec] = {
    "dynamic": Spec(lambda c, B: DynamicCache(), full_bytes),
    "static": Spec(lambda c, B: StaticCache(c, B, c.max_seq_len), lambda c, B, T: full_bytes(c, B, c.max_seq_len)),
    "quantized-8": Spec(lambda c, B: QuantizedCache(8, group_size=4, residual_length=2), quantized_bytes(8),
                        lossless=False, exact_newest=2, error=quantization_error(8)),
    "quantized-4": Spec(lambda c, B: QuantizedCache(4, group_size=4, residual_length=2), quantized_bytes(4),
                        lossless=False, exact_newest=2, error=quantization_error(4)),
    "quantized-2": Spec(lambda c, B: QuantizedCache(2, group_size=4, residual_length=2), quantized_bytes(2),
                        lossless=False, exact_newest=2, error=quantization_error(2)),
    "sliding-window": Spec(lambda c, B: SlidingWindowCache(BUDGET), window_bytes, lossless=False, kept=within_budget),
    "sink": Spec(lambda c, B: SinkCache(BUDGET, n_sink=2), window_bytes, lossless=False, kept=within_budget),
    "heavy-hitter": Spec(lambda c, B: HeavyHitterCache(BUDGET, n_recent=2), window_bytes, lossless=False,
                         kept=within_budget),
    # FastGen: threshold 1 gives every head the full cache (lossless); a policy forced on every head (no profiling)
    # keeps the first token and a window, as a sink cache does. Profiled, heads hold different counts: test_fastgen.py
    "fastgen-full": Spec(lambda c, B: FastGenCache(1.0), full_bytes),
    "fastgen-local": Spec(lambda c, B: FastGenCache(policy="special+punct+frequent+local", window=BUDGET - 1,
                                                     frequent=0), window_bytes, lossless=False, kept=within_budget),
    "paged": Spec(paged, lambda c, B, T: B * math.ceil(T / BLOCK_SIZE) * full_bytes(c, 1, BLOCK_SIZE)),
    "head-split": Spec(lambda c, B: HeadSplitCache(c, tp=2), full_bytes, configs=("mha", "gqa")),
    "copy-counting": Spec(lambda c, B: CopyCountingCache(DynamicCache()), full_bytes),
}

CASES = [pytest.param(name, config, id=f"{name}-{config}") for name, spec in REGISTRY.items()
         for config in spec.configs]
OPTIONAL_DEPENDENCIES = {"transformers", "matplotlib", "ipywidgets", "IPython"}


def registry_class(name: str) -> type[Cache]:
    return type(REGISTRY[name].make(CONFIGS["gqa"], BATCH))


# --- the registry is complete ---

def shipped_caches() -> set[type[Cache]]:
    """Every concrete `Cache` subclass defined in a kvlab module (modules needing a missing extra are skipped)."""
    found = set()
    for info in pkgutil.walk_packages(kvlab.__path__, "kvlab."):
        if info.name == "kvlab.exercises":  # a skeleton and a deliberately broken cache: tests/test_notebook_checks.py
            continue
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as error:
            if (error.name or "").split(".")[0] in OPTIONAL_DEPENDENCIES:
                continue
            raise
        found |= {cls for _, cls in inspect.getmembers(module, inspect.isclass)
                  if issubclass(cls, Cache) and cls.__module__ == module.__name__ and not inspect.isabstract(cls)}
    return found


# Cache subclasses that are not strategies a model can be handed empty, each with where it is tested instead
NOT_STRATEGIES = {"RaggedBatch": "one scheduler step's view over its requests' PagedCaches: tests/test_scheduler.py"}


def test_registry_lists_every_cache_kvlab_ships():
    shipped = shipped_caches()
    missing = ({cls.__qualname__ for cls in shipped} - {registry_class(name).__qualname__ for name in REGISTRY}
               - set(NOT_STRATEGIES))
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


# --- the contract's checks, over every cache (kvlab.contract says what each checks) ---

@pytest.mark.parametrize(("name", "config_name"), [case for case in CASES if REGISTRY[case.values[0]].lossless])
def test_lossless_cache_gives_the_uncached_logits(name, config_name):
    contract.check_logits(REGISTRY[name], config_name)


@pytest.mark.parametrize(("name", "config_name"), CASES)
def test_update_returns_what_the_cache_claims_to_hold(name, config_name):
    contract.check_update(REGISTRY[name], config_name)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_reset_forgets_every_token(name):
    contract.check_reset(REGISTRY[name], "gqa")


@pytest.mark.parametrize(("name", "config_name"), [case for case in CASES if case.values[1] != "mqa"])
def test_reorder_cache_moves_rows_and_forgets_nothing(name, config_name):
    """After reorder_cache(beam_idx), row i continues row beam_idx[i]; a permutation, then its inverse, is a no-op."""
    contract.check_reorder(REGISTRY[name], config_name)


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

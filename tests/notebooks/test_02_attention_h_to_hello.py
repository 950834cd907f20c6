"""What chapter 02 (attention_h_to_hello.ipynb) shows: numbers and sentences its prose and exercises
state, checked against the committed notebook or recomputed with kvlab.
"""

import math

import torch

import kvlab
from kvlab.attention_trace import cache_step_grid, trace_attention


def test_notebook_claims(hello):
    model, tokenizer = hello
    assert tokenizer.decode(kvlab.generate(model, tokenizer.encode_batch("h"), 4)[0]) == "hello"
    with torch.no_grad():
        predicted = model(tokenizer.encode_batch("hell"))[0].argmax(dim=-1)
    assert tokenizer.decode(predicted) == "ello"  # every position predicts the next letter
    assert model.config.head_dim == 16 and math.sqrt(model.config.head_dim) == 4
    assert model.config.d_model == 64 and model.config.n_head == 4
    trace = trace_attention(model, tokenizer.encode_batch("hell"), 0, 0)
    assert trace.scale == 0.25
    long_text = tokenizer.decode(kvlab.generate(model, tokenizer.encode_batch("h"), 10)[0])
    assert long_text == "hello cache"
    N = len(long_text) - 1
    totals = {c: sum(sum(s in (3, 4, 5) for row in cache_step_grid(t, N, c) for s in row) for t in range(1, N + 1))
              for c in (False, True)}
    assert totals == {False: N * (N + 1) * (N + 2) // 6, True: N * (N + 1) // 2} == {False: 220, True: 55}

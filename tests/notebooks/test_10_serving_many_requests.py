"""What chapter 10 (serving_many_requests.ipynb) shows: numbers and sentences its prose and exercises
state, checked against the committed notebook or recomputed with kvlab.
"""

import re

import torch

import kvlab
from kvlab import memory, serving
from kvlab.corpus import make_corpus
from tests.helpers import NOTEBOOKS, assert_printed_above


def test_notebook_waste_numbers():
    """Section 2's claims, from the same seeded lengths: 49.3% unused contiguous, 11.0% and 8.1 slots at 16."""
    lengths = torch.randint(1, 129, (32,), generator=torch.Generator().manual_seed(0)).tolist()
    used = sum(lengths)
    contiguous = memory.contiguous_reserved_tokens(lengths, 128)
    assert f"{(contiguous - used) / contiguous:.1%}" == "49.3%"
    paged = memory.paged_reserved_tokens(lengths, 16)
    assert f"{(paged - used) / paged:.1%}" == "11.0%"
    assert f"{(paged - used) / 32:.1f}" == "8.1"
    assert memory.paged_reserved_tokens(lengths, 128) == contiguous  # block size = max_len: the same reservation


def test_notebook_tp_table():
    """Section 4: the 8-head model, batch of 3, 7 + 12 - 1 = 18 cached tokens, fp32, and Llama 3 70B."""
    config8 = kvlab.GPTConfig(vocab_size=25, n_layer=2, n_head=8, d_model=64, max_seq_len=64)
    for tp, expected in ((1, 55_296), (2, 27_648), (4, 13_824), (8, 6_912)):
        assert memory.kv_cache_bytes_per_device(2, 3, 18, 64, 4, n_head=8, tp=tp) == expected
        assert expected == 2 * 2 * 3 * 18 * (8 // tp) * 8 * 4
    llama = memory.get_preset("llama3-70b")
    per_device = [memory.kv_cache_bytes_per_device(80, 8, 8192, 8192, 2, n_head=64, n_kv_head=8, tp=tp)
                  for tp in (1, 8)]
    assert per_device == [20 * memory.GIB, 2.5 * memory.GIB] and llama.n_kv_head == 8 and config8.n_kv_head == 8


def test_exercise_answers():
    """Exercise 1: 7 blocks of 16 hold 100 tokens, 12 slots unused. Exercise 2: 3 + 10 · (5 - 2) = 33 blocks.
    Exercise 3: Llama 3 8B, tp = 8, 2 · 32 · 8192 · 1 · 128 · 2 bytes per device."""
    assert memory.paged_reserved_tokens([100], 16) - 100 == 12
    assert memory.paged_reserved_tokens([65] * 10, 16, shared_prefix=40) // 16 == 33
    llama8 = memory.get_preset("llama3-8b")
    assert memory.kv_cache_bytes_per_device(32, 1, 8192, 4096, 2, n_head=32, n_kv_head=8, tp=8) == \
        2 * 32 * 8192 * 1 * 128 * 2 == 134_217_728
    assert (llama8.n_layer, llama8.d_model, llama8.n_head, llama8.n_kv_head) == (32, 4096, 32, 8)


# --- section 5: the scheduler -----------------------------------------------------------------------------------------

NOTEBOOK = NOTEBOOKS / "10_serving_many_requests.ipynb"
_ROW = r"{name} +{steps} +{per_step} +{ttft} +{p90} +{tpot} +{peak} +{preempted} +{widest}\n"


def _row(name, steps, per_step, ttft, p90, tpot, peak, preempted, widest):
    """The table row the scheduler cell prints for one run, as a regex (columns are padded with spaces)."""
    return re.compile(_ROW.format(name=re.escape(name), steps=steps, per_step=re.escape(per_step),
                                  ttft=re.escape(ttft), p90=re.escape(p90), tpot=re.escape(tpot), peak=peak,
                                  preempted=preempted, widest=widest))


ROWS = {  # what the committed notebook prints, and what the prose quotes
    "static": ("154", "3.46", "31.75", "68.0", "1.00", "34", "0", "39"),
    "continuous": ("114", "4.68", "6.08", "20.5", "1.00", "49", "0", "39"),
    "continuous, chunks of 8": ("121", "4.40", "10.12", "24.7", "1.00", "47", "0", "8"),
    "continuous, 24 blocks": ("155", "3.44", "19.33", "54.0", "1.20", "24", "12", "45"),
}


def test_scheduler_prose_quotes_the_printed_table():
    """Every number of section 5's prose and of the recap is in the table printed above it."""
    claims = {
        "114 steps to static's 154 (4.68 tokens per step against 3.46)": ["static", "continuous"],
        "from 31.75 to 6.08 steps": ["static", "continuous"],
        "(49 at the peak against 34)": ["static", "continuous"],
        "the widest step 8 tokens instead of 39": ["continuous", "continuous, chunks of 8"],
        "(mean TTFT 10.12)": ["continuous, chunks of 8"],
        "12 preemptions cost 155 steps and a mean TPOT of 1.20": ["continuous, 24 blocks"],
        "step, 45 tokens, re-prefills": ["continuous, 24 blocks"],
        "114 steps to static's 154, mean time to first token 6.08 steps instead of 31.75": ["static", "continuous"],
    }
    for prose, runs in claims.items():
        for run in runs:
            assert_printed_above(NOTEBOOK, prose, _row(run, *ROWS[run]))
    assert_printed_above(NOTEBOOK, "No run changed a token.", "every run gave every request the tokens")
    assert_printed_above(NOTEBOOK, "its first batch served 2 requests for 27 steps while 9 more queued",
                         "static's first batch: the 2 requests there at step 0, for 27 steps, while 9 more arrived")


def test_scheduler_table_recomputed(hello, one_thread):
    """The table, computed again from the scheduler (deterministic: the clock counts steps). The widest step of the
    24-block run, 45 tokens, is wider than any prompt (39): only a preempted request's re-prefill feeds that many."""
    model, tokenizer = hello
    corpus_ids = tokenizer.encode("\n".join(make_corpus(100)))
    stream = serving.make_request_stream(24, seed=0, corpus_ids=corpus_ids, prompt_len=(4, 40), new_tokens=(2, 48))
    assert sum(r.max_new_tokens for r in stream) == 533
    assert max(len(r.prompt) for r in stream) == 39  # the widest unchunked step: the longest prompt at once
    runs = {"static": dict(policy="static"), "continuous": {}, "continuous, chunks of 8": dict(chunk_size=8),
            "continuous, 24 blocks": dict(n_blocks=24)}
    for name, settings in runs.items():
        settings, fed = {**dict(max_batch=8, n_blocks=64, block_size=8), **settings}, []
        hook = model.register_forward_pre_hook(lambda module, args: fed.append(args[0].shape[1]))
        try:
            s = serving.run_schedule(model, stream, **settings).summary()
        finally:
            hook.remove()
        assert str(max(fed)) == ROWS[name][7], name  # the widest step: a whole prompt, a chunk, or a re-prefill
        printed = (str(s["steps"]), f"{s['tokens_per_step']:.2f}", f"{s['mean_ttft_steps']:.2f}",
                   f"{s['p90_ttft_steps']:.1f}", f"{s['mean_tpot_steps']:.2f}", str(s["peak_blocks"]),
                   str(s["preemptions"]))
        assert printed == ROWS[name][:7], name
        assert s["output_tokens"] == 533 and f"{533 / s['steps']:.2f}" == ROWS[name][1]
    assert int(ROWS["continuous, 24 blocks"][7]) > 39 and int(ROWS["continuous, chunks of 8"][7]) == 8


def test_exercise_4_static_steps(hello):
    """Exercise 4: batches (3, 7) then (2, 5) last 7 + 5 = 12 steps; continuous batching refills rows: 10."""
    assert max(3, 7) + max(2, 5) == 12
    requests = [serving.Request(i, (1, 2, 3), n, arrival=0) for i, n in enumerate((3, 7, 2, 5))]
    steps = {policy: serving.run_schedule(hello[0], requests, policy=policy, max_batch=2, block_size=8).steps
             for policy in ("static", "continuous")}
    assert steps == {"static": 12, "continuous": 10}
    assert_printed_above(NOTEBOOK, "Next: [11", "continuous batching: 10 steps")

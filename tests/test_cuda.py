"""The README's GPU promise, checked where a GPU exists (skipped elsewhere: the course never needs one)."""

from __future__ import annotations

import pytest
import torch

import kvlab
from kvlab import quality
from kvlab.compressed_cache import HeavyHitterCache, QuantizedCache, SinkCache, SlidingWindowCache
from kvlab.hello import load_kv_head_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def hello_cuda():
    return kvlab.load_hello_model(device="cuda")


def test_hello_on_gpu_all_ways(hello_cuda):
    model, tok = hello_cuda
    prompt = tok.encode_batch("h").to("cuda")
    static = kvlab.StaticCache(model.config, batch_size=1, max_cache_len=61, device="cuda")
    outs = [kvlab.generate(model, prompt, 60, use_cache=False), kvlab.generate(model, prompt, 60),
            kvlab.generate(model, prompt, 60, cache=static)]
    assert tok.decode(outs[0][0])[:5] == "hello"
    assert all(torch.equal(outs[0], out) for out in outs[1:])
    assert static.keys[0].device.type == "cuda"


def test_gpu_tokens_match_cpu_tokens(hello_cuda):
    model, tok = hello_cuda
    cpu_model, _ = kvlab.load_hello_model()
    prompt = tok.encode_batch("the ca")
    on_gpu = kvlab.generate(model, prompt.to("cuda"), 80).cpu()
    assert torch.equal(on_gpu, kvlab.generate(cpu_model, prompt, 80))


def test_gpu_cached_logits_equal_uncached(hello_cuda):
    model, tok = hello_cuda
    idx = tok.encode_batch("hello world\nthe cache keeps").to("cuda")
    cache = kvlab.DynamicCache()
    with torch.no_grad():
        cached = torch.cat([model(idx[:, :5], cache)] + [model(idx[:, t:t + 1], cache) for t in range(5, idx.shape[1])],
                           dim=1)
        torch.testing.assert_close(cached, model(idx), rtol=0, atol=1e-4)


def test_gpu_stats_and_bf16_static_cache(hello_cuda):
    model, tok = hello_cuda
    model16 = kvlab.load_hello_model(device="cuda")[0].to(torch.bfloat16)
    cache = kvlab.StaticCache(model16.config, 1, 40, dtype=torch.bfloat16, device="cuda")
    tokens, stats = kvlab.generate(model16, tok.encode_batch("h").to("cuda"), 20, cache=cache, return_stats=True)
    assert tokens.shape == (1, 21) and stats.prefill_s > 0 and len(stats.decode_s) == 19
    assert cache.nbytes == kvlab.memory.kv_cache_bytes(4, 1, 40, 64, 2)


def test_lean_generate_on_gpu_gives_generates_tokens(hello_cuda):
    """The lean loop allocates its K/V buffers on the weights' device and dtype: cuda float32 and bfloat16."""
    model, tok = hello_cuda
    prompt = tok.encode_batch("keys and v").to("cuda")
    assert torch.equal(kvlab.lean_generate(model, prompt, 40), kvlab.generate(model, prompt, 40))
    model16 = kvlab.load_hello_model(device="cuda")[0].to(torch.bfloat16)
    out16 = kvlab.lean_generate(model16, prompt, 20)
    assert out16.device.type == "cuda" and torch.equal(out16, kvlab.generate(model16, prompt, 20))


# --- chapters 08 and 09: compressing the cache ------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lossy_caches_on_cuda_match_cpu(hello, held_out):
    model, _ = hello
    tokens, _ = held_out
    gpu_model = load_kv_head_model(4, device="cuda")[0]
    makes = {"int8": lambda: QuantizedCache(8), "int4": lambda: QuantizedCache(4),
             "window": lambda: SlidingWindowCache(16), "sink": lambda: SinkCache(16, 4),
             "h2o": lambda: HeavyHitterCache(16)}
    for name, make in makes.items():
        cpu_cache, gpu_cache = make(), make()
        cpu = quality.decode_token_by_token(model, tokens, cpu_cache)
        gpu = quality.decode_token_by_token(gpu_model, tokens.cuda(), gpu_cache)
        assert gpu.logits.device.type == "cuda" and gpu.peak_nbytes == cpu.peak_nbytes, name
        agreement = (gpu.logits.cpu().argmax(-1) == cpu.logits.argmax(-1)).float().mean().item()
        assert agreement >= 0.99, name
        if name in ("window", "sink"):  # same positions held, same logits up to kernel rounding
            assert torch.equal(gpu_cache.positions[0].cpu(), cpu_cache.positions[0])
            torch.testing.assert_close(gpu.logits.cpu(), cpu.logits, atol=1e-3, rtol=0)

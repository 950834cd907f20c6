"""What chapter 05 (prefill_and_decode.ipynb) shows: numbers and sentences its prose and exercises
state, checked against the committed notebook or recomputed with kvlab.
"""

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch

import kvlab
from kvlab import hardware, measure, memory
from kvlab.flops import arithmetic_intensity, bytes_moved, forward_flops
from tests.helpers import NOTEBOOKS, assert_printed_above

CHAPTER = kvlab.GPTConfig(vocab_size=256, n_layer=4, n_head=8, d_model=512, max_seq_len=1024)  # the notebook's model


GPT2 = memory.get_preset("gpt2-small")


A100, H100, T4 = hardware.get_gpu("a100-80gb-sxm"), hardware.get_gpu("h100-sxm"), hardware.get_gpu("t4")


NOTEBOOK = NOTEBOOKS / "05_prefill_and_decode.ipynb"


def _hello_decode_step_ops(model, prompt):
    cache = kvlab.DynamicCache()
    with torch.inference_mode():
        model(prompt[:, :-1], cache)
        return measure.count_operations(lambda: model(prompt[:, -1:], cache))


def test_exercise_2_batch_that_reaches_the_a100_ridge():
    """I(B) = B·F / (W + B·K) >= R  <=>  B >= R·W / (F - R·K): solved in closed form, not by the notebook's loop."""
    F, R = forward_flops(GPT2, 1, 16), A100.ridge_point("fp16")
    W, K = GPT2.n_params * 2, 2 * GPT2.n_layer * 17 * GPT2.d_model * 2
    B = math.ceil(R * W / (F - R * K))
    intensity = [arithmetic_intensity(GPT2, 1, 16, 2, batch_size=b) for b in (B - 1, B)]
    assert intensity[1] >= R > intensity[0]
    assert B > R  # "intensity ≈ B" would have said B ≈ R; the KV caches push it well above


def test_chapter_model_on_gpus_claims():
    """§6: in fp16 a 128-token prefill and every decode step are memory-bound on A100 and H100; 512 tokens are not."""
    for gpu in (A100, H100):
        ridge = gpu.ridge_point("fp16")
        assert arithmetic_intensity(CHAPTER, 128, 0, 2) < ridge < arithmetic_intensity(CHAPTER, 512, 0, 2)
        assert arithmetic_intensity(CHAPTER, 1, 16, 2, batch_size=16) < ridge
    assert 150 < A100.ridge_point("fp16") < H100.ridge_point("fp16") < 300  # "about 150 to 300 FLOPs per byte"
    assert memory.kv_cache_bytes(4, 1, 512, 512, 4) == 8 * 2**20  # "512 cached tokens add 8.0 MiB"


def test_gpt2_xl_on_a_t4_claims():
    """§8: batch 1 takes at least (weights + KV) / bandwidth; batch 32 stays under 50 ms, batch 64 does not and
    would not fit in 16 GB."""
    xl = memory.get_preset("gpt2-xl")

    def step_s(B):
        return hardware.roofline_time(B * forward_flops(xl, 1, 1000), bytes_moved(xl, 1, 1000, 2, B),
                                      T4.fp16_flops, T4.bandwidth)

    assert step_s(1) == pytest.approx((2 * 1_557_611_200 + 2 * 48 * 1001 * 1600 * 2) / 320e9)
    assert step_s(32) < 0.05 < step_s(64)
    assert xl.weight_bytes(2) + xl.kv_cache_bytes(64, 1001, 2) > 16 * memory.GIB


def test_section_9_numbers_are_what_the_code_gives(hello):
    model, tok = hello
    prompt = torch.tensor([tok.encode("keys and values ")])
    assert prompt.shape == (1, 16)
    ops = _hello_decode_step_ops(model, prompt)
    step_flops, step_bytes = forward_flops(model.config, 1, 15), bytes_moved(model.config, 1, 15, 4)
    assert step_flops < 500_000 and step_bytes < 1_000_000  # "under half a million FLOPs and under a megabyte"
    assert 80 <= ops.total() <= 120  # "about a hundred tiny operations"
    assert_printed_above(NOTEBOOK, "Under half a million FLOPs and a megabyte",
                         f"{step_flops:,} FLOPs, {step_bytes:,} bytes to move, {ops.total()} PyTorch operations")
    assert_printed_above(NOTEBOOK, "Why not write all the course's code this way?", "identical tokens: True")


def test_exercise_4_operations_per_layer(hello):
    """Each block runs the same operations, so the count grows by a fixed number per layer."""
    model, tok = hello
    prompt = torch.tensor([tok.encode("keys and values ")])
    counts = {}
    for n_layer in (4, 8, 12):
        config = kvlab.GPTConfig(vocab_size=25, n_layer=n_layer, n_head=4, d_model=64, max_seq_len=128)
        counts[n_layer] = _hello_decode_step_ops(kvlab.TinyGPT(config).eval(), prompt).total()
    assert counts[4] == _hello_decode_step_ops(model, prompt).total()  # depth alone sets the count
    per_layer = (counts[8] - counts[4]) // 4
    assert counts[12] - counts[8] == counts[8] - counts[4] == 4 * per_layer
    by_hand = 4 + 4 + 3 + 2 + 2 + 2 + 1 + 1 + 1 + 1  # linear, transpose, view, add, layer_norm, cat, split, sdpa, ...
    assert per_layer == by_hand  # ... reshape, gelu: CausalSelfAttention + MLP + Block, read off model.py


def test_section_10_gpu_savings_are_printed_and_recomputed():
    """§10: Llama 2 7B on an H100 (fp16, batch 1, roofline): 504x fewer FLOPs, 1.81x less time at 1,000 tokens;
    2,050x and 6.82x at 4,000; re-feeding free up to t = 302; GPT-2 small saves nearly the same time per GPU."""
    llama, gpt2 = memory.get_preset("llama2-7b"), memory.get_preset("gpt2-small")
    at = hardware.cache_savings(llama, [1000, 4000], H100.fp16_flops, H100.bandwidth, 2)
    assert [round(s.flops_ratio) for s in at] == [504, 2050]
    assert [round(s.time_ratio, 2) for s in at] == [1.81, 6.82]
    assert hardware.free_refeed_length(llama, H100.fp16_flops, H100.bandwidth, 2) == 302
    for gpu in hardware.GPU_PRESETS.values():  # "GPT-2 small, far smaller, saves about the same time on each GPU"
        (big,) = hardware.cache_savings(llama, [1000], gpu.fp16_flops, gpu.bandwidth, 2)
        (small,) = hardware.cache_savings(gpt2, [1000], gpu.fp16_flops, gpu.bandwidth, 2)
        assert small.time_ratio == pytest.approx(big.time_ratio, rel=0.04)  # "within 4%"
        (early,) = hardware.cache_savings(llama, [32], gpu.fp16_flops, gpu.bandwidth, 2)
        assert early.time_ratio == 1.0  # the strict cell's claim: re-feeding 32 tokens costs no time
    row = re.compile(r"Llama 2 7B on NVIDIA H100 SXM +302 +504× +1\.81× +2,050× +6\.82×")
    assert_printed_above(NOTEBOOK, "1,000 tokens take 504× fewer FLOPs with the cache but only 1.81× less time", row)
    assert_printed_above(NOTEBOOK, "the longest t whose uncached step is still memory-bound: 302", row)


def test_section_10_says_the_gpu_numbers_are_an_estimate_and_measures_the_cpu():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    prose = " ".join(" ".join("".join(c["source"]).split()) for c in cells if c["cell_type"] == "markdown")
    assert "These are roofline estimates from published figures, not measurements." in prose
    timing = [c for c in cells if "generate_with_stats(model, one_token, T_CPU" in "".join(c["source"])]
    assert len(timing) == 1 and "nbval-ignore-output" in timing[0]["metadata"].get("tags", [])
    assert_printed_above(NOTEBOOK, "Black: FLOPs saved, about T/2 for every model.",
                         "T = 32: roofline time saved 1.00× on every GPU")


def test_speculative_decoding_claim():
    """§10: checking k drafted tokens in one forward costs about one decode step while k is far below the ridge."""
    llama = memory.get_preset("llama2-7b")

    def verify_s(k):
        return hardware.roofline_time(forward_flops(llama, k, 1000), bytes_moved(llama, k, 1000, 2),
                                      H100.fp16_flops, H100.bandwidth)

    assert verify_s(64) / verify_s(1) < 1.01
    assert verify_s(1024) / verify_s(1) > 2  # past the ridge it is no longer free
    assert_printed_above(NOTEBOOK, "Each accepted draft is then nearly free for the large model",
                         "checking 64 drafted tokens in one forward on an H100: 4.19 ms, 1.002× one decode step")


def test_ridge_and_gpu_preset_claims():
    """§4: a prefill passes the CPU's ridge at about twice the ridge point in tokens (intensity ≈ P/2 in fp32);
    §6: the RTX 4090's 330 TFLOP/s with FP16 accumulate is printed; no promise about chapter 9 remains."""
    for ridge in (3.0, 6.0, 12.0, 30.0):
        passes = next(P for P in range(1, 1025) if arithmetic_intensity(CHAPTER, P, 0, 4) >= ridge)
        assert passes == pytest.approx(2 * ridge, rel=0.1, abs=1)
    assert_printed_above(NOTEBOOK, "passes the ridge at about twice the ridge point in tokens",
                         re.compile(r"passes it from P = \d+ tokens on \(intensity ≈ P/2 in fp32\)"))
    assert_printed_above(NOTEBOOK, "the RTX 4090 reaches 330 TFLOP/s only with FP16 accumulation",
                         "330.3 dense with FP16 accumulate")
    source = NOTEBOOK.read_text()
    assert "chapter 9 shows" not in source and "a few dozen tokens" not in source


# --- "A common explanation says ...": each box quotes numbers printed above it, or points at a measured one ---


def test_box_memory_bound_is_bandwidth_not_capacity():
    """§2: a decode step with nothing cached is already at 0.479 FLOP/byte; 512 cached tokens add 8.0 MiB to 50.6."""
    box = "a decode step with nothing cached already runs at 0.479 FLOP/byte"
    assert_printed_above(NOTEBOOK, box, re.compile(r"decode, 0 tokens cached +25,436,160 +53,080,064 +0\.479"))
    assert_printed_above(NOTEBOOK, box, "K and V of 512 cached tokens: 8.0 MiB (8.4 MB), weights: 50.6 MiB")
    assert forward_flops(CHAPTER, 1, 0) / bytes_moved(CHAPTER, 1, 0, 4) == pytest.approx(0.479, abs=5e-4)


def test_box_decode_is_slower_per_token_than_prefill():
    """§7: the factor is measured, so the box points at the printed line, and an assert checks its direction."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    (timing,) = [c for c in cells if "prefill_per_token = last.prefill_s / last.prompt_len" in "".join(c["source"])]
    assert "nbval-ignore-output" in timing["metadata"]["tags"]
    assert "assert last.decode_s > prefill_per_token" in "".join(timing["source"])
    assert_printed_above(NOTEBOOK, "per token it is the other way round, by the factor printed above",
                         re.compile(r"decode is \d+× slower per token"))


def test_box_throughput_counts_output_tokens():
    """§8: GPT-2 XL on a T4, batch 8, roofline: prompt and output rates, and the mixed figure for two request mixes,
    recomputed here by summing every step."""
    xl = memory.get_preset("gpt2-xl")

    def step(n_new, n_past):
        return hardware.roofline_time(8 * forward_flops(xl, n_new, n_past), bytes_moved(xl, n_new, n_past, 2, 8),
                                      T4.fp16_flops, T4.bandwidth)

    rates = {}
    for P, n_out in ((800, 200), (1000, 24)):
        prefill, decode = step(P, 0), sum(step(1, P + i) for i in range(n_out - 1))
        rates[P] = [round(x) for x in (8 * P / prefill, 8 * (n_out - 1) / decode, 8 * (P + n_out) / (prefill + decode))]
    assert rates == {800: [19370, 481, 2196], 1000: [19022, 457, 9951]}
    box = "at batch 8 prompts go through at 19,370 tokens/s and output at 481"
    for line in ("prompts 19,370 tokens/s, output 481 tokens/s; both counted together 2,196",
                 "prompts 19,022 tokens/s, output 457 tokens/s; both counted together 9,951"):
        assert_printed_above(NOTEBOOK, box, line)


def test_server_cpu_ridges_are_computed_from_their_spec_sheets():
    """§4: 'a large server's ridge is higher': 16 and 23 FLOP/byte, against a few on this 2-core machine."""
    epyc = hardware.ridge_point(96 * 2.4e9 * 32, 12 * 4.8e9 * 8)
    xeon = hardware.ridge_point(56 * 2.0e9 * 64, 8 * 4.8e9 * 8)
    assert (round(epyc), round(xeon)) == (16, 23)
    assert_printed_above(NOTEBOOK, "passes the ridge at about twice the ridge point in tokens",
                         "AMD EPYC 9654 (96 cores, 12 × DDR5-4800): 7.4 TFLOP/s, 461 GB/s, ridge point 16 FLOP/byte")
    assert_printed_above(NOTEBOOK, "passes the ridge at about twice the ridge point in tokens",
                         "8 × DDR5-4800): 7.2 TFLOP/s, 307 GB/s, ridge point 23 FLOP/byte")


def test_last_level_cache_is_printed_not_assumed():
    """§1: the weights are compared with this machine's last-level cache, printed from /sys, not with 'most CPUs'."""
    source = NOTEBOOK.read_text()
    assert "most CPUs" not in source
    assert_printed_above(NOTEBOOK, "fit in the last-level cache decides where a forward reads them from",
                         "this CPU's last-level cache: ")


# --- section 10's recorded GPU measurement (benchmarks/results/gpu-cache-savings-h200.json) ---

RECORD = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "gpu-cache-savings-h200.json"


def _recorded_shape(name, run):
    c = run["config"]
    return memory.ModelPreset(name, c["n_layer"], c["d_model"], c["n_head"], c["n_kv_head"], c["vocab_size"],
                              c["max_seq_len"], run["n_params"], "recorded")


def test_recorded_gpu_run_is_printed_from_the_file_and_backs_the_prose():
    """The chapter prints the recorded run; its sentences hold for the recorded numbers: the cache saved less time
    than the roofline says, a cached step took several times its roofline time, and the uncached step stayed close
    to the cached one until long lengths, then pulled away."""
    record = json.loads(RECORD.read_text())
    assert record["device"] == "NVIDIA H200" and record["attention_backends"]["cudnn"] is False
    peak, bandwidth = record["measured_peak_flops"], record["measured_bandwidth"]
    for name, run in record["models"].items():
        gen = run["generation"]
        (estimate,) = hardware.cache_savings(_recorded_shape(name, run), [gen["tokens"]], peak, bandwidth, 2)
        measured = gen["uncached_s"] / gen["cached_s"]
        assert 1 < measured < estimate.time_ratio  # "even less time than the roofline says"
        line = (f"{name}, {gen['tokens']:,} tokens: {estimate.flops_ratio:.0f}× fewer FLOPs; {gen['uncached_s']:.1f} s "
                f"without a cache, {gen['cached_s']:.1f} s with: {measured:.2f}× less time "
                f"(roofline {estimate.time_ratio:.2f}×)")
        assert_printed_above(NOTEBOOK, "The cache saved even less time than the roofline says", line)
    llama = record["models"]["Llama 2 7B"]
    roof_1 = hardware.decode_step_seconds(_recorded_shape("Llama 2 7B", llama), 1, peak, bandwidth, bytes_per_elem=2)
    assert llama["cached_step_s"][0] > 3 * roof_1  # "several times the roofline's time"
    steps = dict(zip(llama["lengths"], zip(llama["cached_step_s"], llama["uncached_step_s"])))
    assert all(uncached < 1.25 * cached for t, (cached, uncached) in steps.items() if t <= 512)  # "nearly free"
    assert steps[4096][1] > 3 * steps[4096][0]  # "until the measured lines part"
    assert_printed_above(NOTEBOOK, "even a cached step takes several times the roofline's time",
                         f"Llama 2 7B, one step at t = 1: {llama['cached_step_s'][0] * 1e3:.1f} ms measured, "
                         f"{roof_1 * 1e3:.1f} ms by the roofline")


def test_recording_script_times_both_ways():
    """tools/record_gpu_cache_savings.py's timer on a tiny model: one median per length and way, all positive."""
    script = RECORD.parents[2] / "tools" / "record_gpu_cache_savings.py"
    spec = importlib.util.spec_from_file_location("record_gpu", script)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model = kvlab.TinyGPT(kvlab.GPTConfig(vocab_size=32, n_layer=1, n_head=2, d_model=16, max_seq_len=16)).eval()
    timed = tool.step_times(model, [1, 2, 8], torch.float32, repeats=1)
    assert timed["lengths"] == [1, 2, 8]
    assert len(timed["cached_step_s"]) == len(timed["uncached_step_s"]) == 3
    assert all(s > 0 for s in timed["cached_step_s"] + timed["uncached_step_s"])
    assert set(tool.generation_times(model, 4)) == {"cached_s", "uncached_s"}


def test_benchmarks_readme_quotes_the_recorded_gpu_run():
    """benchmarks/README.md's GPU paragraph: every number recomputed from the recorded JSON."""
    record = json.loads(RECORD.read_text())
    text = " ".join((RECORD.parents[1] / "README.md").read_text().split())
    llama, small = record["models"]["Llama 2 7B"], record["models"]["GPT-2 small"]
    shape = _recorded_shape("Llama 2 7B", llama)
    peak, bandwidth = record["measured_peak_flops"], record["measured_bandwidth"]
    (estimate,) = hardware.cache_savings(shape, [1000], peak, bandwidth, 2)
    ratios = [u / c for t, c, u in zip(llama["lengths"], llama["cached_step_s"], llama["uncached_step_s"]) if t <= 768]
    roof_1 = hardware.decode_step_seconds(shape, 1, peak, bandwidth, bytes_per_elem=2)
    diagnosis = record["diagnosis"]
    quoted = [f"{peak / 1e12:.0f} TFLOP/s (bf16 matmul) and {bandwidth / 1e12:.2f} TB/s (read)",
              f"{llama['n_params'] / 1e9:.2f} billion weights",
              f"1,000 tokens took {llama['generation']['cached_s']:.1f} s with the cache and "
              f"{llama['generation']['uncached_s']:.1f} s without",
              f"{llama['generation']['uncached_s'] / llama['generation']['cached_s']:.2f}× less time for "
              f"{estimate.flops_ratio:.0f}× fewer FLOPs",
              f"below the roofline's {estimate.time_ratio:.2f}×",
              f"a cached step took {llama['cached_step_s'][0] * 1e3:.1f} ms where its "
              f"{llama['n_params'] * 2 / 1e9:.1f} GB of weights need {roof_1 * 1e3:.1f} ms",
              f"took {min(ratios):.2f} to {max(ratios):.2f} of the cached step's time",
              f"at 4,096 it took {llama['uncached_step_s'][-1] * 1e3:.0f} ms, the cached one "
              f"{llama['cached_step_s'][-1] * 1e3:.0f} ms",
              f"{small['generation']['cached_s']:.1f} s against {small['generation']['uncached_s']:.1f} s "
              f"({small['generation']['uncached_s'] / small['generation']['cached_s']:.2f}×)",
              f"took {diagnosis['gpt2_small_generation_200_cudnn_sdp_on']['cached_s']:.1f} s instead of "
              f"{diagnosis['gpt2_small_generation_200_cudnn_sdp_off']['cached_s']:.2f} s"]
    for phrase in quoted:
        assert phrase in text, phrase
    slower = (diagnosis["gpt2_small_generation_200_cudnn_sdp_on"]["cached_s"]
              / diagnosis["gpt2_small_generation_200_cudnn_sdp_off"]["cached_s"])
    main_readme = " ".join((RECORD.parents[2] / "README.md").read_text().split())
    assert f"({slower:.0f} times slower on an H200)" in main_readme

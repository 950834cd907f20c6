"""Measuring what the chapters claim: FLOPs counted by PyTorch itself (to check `kvlab.flops` against), bytes
copied, operations run, generation timings, and the peak FLOP/s and bandwidth of your own machine."""

from __future__ import annotations

import contextlib
import statistics
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from .cache import Cache
from .checks import check_bool, check_int, check_one_of, check_type
from .flops import bytes_moved, forward_flops
from .generate import GenerationStats, _clock, generate, generate_with_stats
from .memory import kv_cache_bytes
from .model import TinyGPT

__all__ = ["count_flops", "CopyCounter", "count_copied_bytes", "OpCounter", "count_operations", "CopyCountingCache",
           "cache_copied_bytes", "expected_copied_bytes",
           "median_seconds", "measure_peak_flops", "measure_bandwidth", "last_level_cache_bytes", "PhaseTimes",
           "time_phases", "sweep_phases",
           "time_generation", "cumulative_tokens_per_s", "record_positions",
           "count_generation_flops", "loglog_slope"]


# --- chapter 01: autoregressive generation ---


def time_generation(model: TinyGPT, prompt_len: int, n_new: int, *, use_cache: bool = True, repeats: int = 5,
                    warmup: int = 1, batch_size: int = 1, seed: int = 0,
                    num_threads: int | None = None) -> GenerationStats:
    """Time greedy generation of `n_new` tokens after a random prompt of `prompt_len` tokens, robustly.

    Runs `warmup` untimed generations (the first call pays one-off costs: memory allocation, kernel selection),
    then `repeats` timed ones through kvlab's one timing path, `generate(..., return_stats=True)`. Returns a
    `GenerationStats` whose `prefill_s` (time to first token) and each `decode_s[i]` are the *median* over the
    repeats of that step, so a step slowed down by another process moves the result less than it would move a mean.

    `num_threads` sets PyTorch's CPU threads for the measurement only (None keeps the current setting). For models
    as small as the course's, one thread is usually fastest (more threads mostly add synchronisation) and far
    steadier when other programs share the cores: busy threads that wait for each other waste whole time slices.
    """
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    for name, value, minimum in (("prompt_len", prompt_len, 1), ("n_new", n_new, 1), ("repeats", repeats, 1),
                                 ("warmup", warmup, 0), ("batch_size", batch_size, 1), ("seed", seed, 0)):
        check_int(name, value, minimum)
    check_bool("use_cache", use_cache)
    if num_threads is not None:
        check_int("num_threads", num_threads, 1)
    if prompt_len + n_new > model.config.max_seq_len:
        raise ValueError(f"prompt_len ({prompt_len}) + n_new ({n_new}) = {prompt_len + n_new} exceeds "
                         f"max_seq_len={model.config.max_seq_len}")
    device = next(model.parameters()).device
    prompt = torch.randint(model.config.vocab_size, (batch_size, prompt_len),
                           generator=torch.Generator().manual_seed(seed)).to(device)  # (B, P)
    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or threads)
    try:
        for _ in range(warmup):
            generate_with_stats(model, prompt, n_new, use_cache=use_cache)
        runs = [generate_with_stats(model, prompt, n_new, use_cache=use_cache)[1] for _ in range(repeats)]
    finally:
        torch.set_num_threads(threads)
    return GenerationStats(prompt_len=prompt_len, new_tokens=n_new,
                           prefill_s=statistics.median(run.prefill_s for run in runs),
                           decode_s=[statistics.median(step) for step in zip(*(run.decode_s for run in runs))])


def cumulative_tokens_per_s(stats: GenerationStats) -> list[float]:
    """Throughput of a generation stopped after 1, 2, ..., N tokens: n / (time of the first n steps).

    A greedy generation of n tokens does exactly the first n steps of a longer one, so one timed run of N tokens
    gives the throughput of every shorter generation too.
    """
    check_type("stats", stats, GenerationStats, "a kvlab.GenerationStats")
    elapsed, throughput = 0.0, []
    for n, step_s in enumerate([stats.prefill_s, *stats.decode_s], start=1):
        elapsed += step_s
        throughput.append(n / elapsed if elapsed > 0 else float("inf"))
    return throughput


@contextlib.contextmanager
def record_positions(model: torch.nn.Module) -> Iterator[list[int]]:
    """Record how many token positions each forward call of `model` computes (``idx.shape[1]``), inside a block.

        with record_positions(model) as fed:
            kvlab.generate(model, prompt, 5, use_cache=False)
        # fed == [P, P + 1, P + 2, P + 3, P + 4]
    """
    check_type("model", model, torch.nn.Module, "a torch.nn.Module")
    fed: list[int] = []

    def hook(module, args, kwargs):
        idx = args[0] if args else kwargs["idx"]
        fed.append(idx.shape[1])

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield fed
    finally:
        handle.remove()


# --- chapter 03: bytes copied by a cache ---

class CopyCounter(TorchDispatchMode):
    """Adds up the bytes written by PyTorch's copying ops while it is active: ``with CopyCounter() as c: ...``.

    A dispatch mode sees every ATen operation that runs inside it, after Python has been translated into PyTorch's
    own ops: ``torch.cat`` arrives as ``aten.cat``, ``buffer[:, :, 3:4] = k`` as a slice (a view, no copy) followed by
    ``aten.copy_`` into it. Each op in `COPY_OPS` writes a fresh copy of data that already existed, so its output's
    size is the bytes it copied; views (slice, transpose, view) copy nothing and are not counted.
    """

    COPY_OPS = {torch.ops.aten.cat, torch.ops.aten.stack, torch.ops.aten.copy_, torch.ops.aten.clone,
                torch.ops.aten.index_select, torch.ops.aten.index, torch.ops.aten._to_copy}

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.ops: Counter[str] = Counter()  # how many times each copying op ran

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in self.COPY_OPS:
            self.bytes += out.numel() * out.element_size()
            self.ops[func.overloadpacket.__name__] += 1
        return out


def count_copied_bytes(fn: Callable[[], object]) -> int:
    """Bytes copied by PyTorch's copying ops (see `CopyCounter`) while ``fn()`` runs."""
    check_type("fn", fn, Callable, "a callable taking no arguments")
    with CopyCounter() as counter:
        fn()
    return counter.bytes


class OpCounter(TorchDispatchMode):
    """Counts the PyTorch (ATen) operations that run while it is active, views included: ``with OpCounter() as c:``.

    However little work an operation does, running it costs a fixed toll: Python calls into PyTorch, the
    dispatcher picks a kernel, a result tensor is made. On a CPU that is around a microsecond, so a model of many
    tiny operations is limited by their number rather than by FLOPs or bytes (chapter 5, section 9).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()  # how many times each operation ran

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_operations(fn: Callable[[], object]) -> Counter[str]:
    """How many times each PyTorch operation ran while ``fn()`` ran (see `OpCounter`); ``.total()`` is their sum."""
    check_type("fn", fn, Callable, "a callable taking no arguments")
    with OpCounter() as counter:
        fn()
    return counter.ops


class CopyCountingCache(Cache):
    """Wraps a cache and counts the bytes *it* copies, leaving out the model's own copies.

    Every call the model makes goes to the wrapped cache unchanged; `update` and `reorder_cache` run inside a
    `CopyCounter`. `copied_bytes` holds the running total, and ``copied_bytes_at[L]`` the total at the moment every
    layer held L tokens, so one generation gives the count for each length along the way.
    """

    def __init__(self, cache: Cache) -> None:
        check_type("cache", cache, Cache, "a kvlab.Cache")
        self.cache = cache
        self.copied_bytes = 0
        self.copied_bytes_at: dict[int, int] = {}

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        with CopyCounter() as counter:
            keys_values = self.cache.update(key, value, layer_idx)
        self.copied_bytes += counter.bytes
        # layers are updated in order, so the last layer's write for a length is the one that stays
        self.copied_bytes_at[self.cache.get_seq_length(layer_idx)] = self.copied_bytes
        return keys_values

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        with CopyCounter() as counter:
            self.cache.reorder_cache(beam_idx)
        self.copied_bytes += counter.bytes
        super().reorder_cache(beam_idx)  # the record of fed ids: the model's bookkeeping, not the wrapped cache's

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.cache.get_seq_length(layer_idx)

    def get_max_cache_shape(self) -> int | None:
        return self.cache.get_max_cache_shape()

    def reset(self) -> None:
        self.cache.reset()

    @property
    def nbytes(self) -> int:
        return self.cache.nbytes


def cache_copied_bytes(model: TinyGPT, idx: torch.Tensor, max_new_tokens: int, cache: Cache) -> int:
    """Bytes `cache` copies while `kvlab.generate` (greedy) continues `idx` by `max_new_tokens` tokens."""
    counting = CopyCountingCache(cache)
    generate(model, idx, max_new_tokens, cache=counting)
    return counting.copied_bytes


def expected_copied_bytes(strategy: str, config, *, batch_size: int, prompt_len: int, new_tokens: int,
                          bytes_per_elem: float = 4) -> int:
    """Bytes a cache copies while `generate` makes `new_tokens` tokens after a `prompt_len`-token prompt, on paper.

    One token's K and V in every layer take ``b = kv_cache_bytes(..., seq_len=1)`` bytes. The prompt is fed once
    (prefill), then `new_tokens - 1` single tokens (the last token is returned, never fed), so the cache ends at
    ``T = prompt_len + new_tokens - 1`` tokens.

    - ``"static"`` writes each token in place once: ``b · T`` bytes, Θ(T).
    - ``"dynamic"`` stores the prompt's K/V as they are (no copy), then each decode step concatenates and so
      copies the whole cache it produces, of L = prompt_len + 1, ..., T tokens: ``b · Σ L``, which is
      ``b · (T(T+1) - P(P+1)) / 2`` with P = prompt_len: Θ(T²) for a short prompt.
    """
    check_one_of("strategy", strategy, ("dynamic", "static"))
    for name, value in (("batch_size", batch_size), ("prompt_len", prompt_len), ("new_tokens", new_tokens)):
        check_int(name, value, 1)
    per_token = kv_cache_bytes(config.n_layer, batch_size, 1, config.d_model, bytes_per_elem,
                               n_head=config.n_head, n_kv_head=config.n_kv_head)
    final_len = prompt_len + new_tokens - 1
    if strategy == "static":
        return per_token * final_len
    return per_token * sum(range(prompt_len + 1, final_len + 1))


# --- chapter 04: cost with and without a cache ---


def _math_attention():
    """Run attention as plain matmuls: PyTorch's counter has no formula for the fused CPU attention kernel."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3 has no sdpa_kernel; its CPU attention already decomposes into matmuls
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


@torch.inference_mode()
def count_flops(model: TinyGPT, idx: torch.Tensor, cache: Cache | None = None) -> int:
    """FLOPs of ``model(idx, cache)`` as counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls only)."""
    with _math_attention(), FlopCounterMode(display=False) as counter:
        model(idx, cache)
    return counter.get_total_flops()


@torch.inference_mode()
def count_generation_flops(model: TinyGPT, prompt_len: int, n_new: int, *, use_cache: bool = True) -> list[int]:
    """FLOPs of every forward of one `kvlab.generate` call, as counted by PyTorch's `FlopCounterMode`.

    Entry 0 is the prefill (the prompt of `prompt_len` tokens), entry i the decode step that sees
    prompt_len + i tokens, so the list lines up with `GenerationStats` (``prefill_s, *decode_s``) and with
    `kvlab.flops.decode_step_flops`. It counts the real loop: a hook reads the counter after each forward. Attention
    runs as plain matmuls, which the counter knows (see `count_flops`). Slow (the counter inspects every operation):
    keep n_new to a few hundred.
    """
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    check_int("prompt_len", prompt_len, 1)
    check_int("n_new", n_new, 1)
    check_bool("use_cache", use_cache)
    device = next(model.parameters()).device
    prompt = torch.zeros(1, prompt_len, dtype=torch.long, device=device)  # (1, P): the ids do not change the cost
    running_totals: list[int] = []
    with _math_attention(), FlopCounterMode(display=False) as counter:
        handle = model.register_forward_hook(lambda *_: running_totals.append(counter.get_total_flops()))
        try:
            generate(model, prompt, n_new, use_cache=use_cache)  # checks prompt_len + n_new <= max_seq_len
        finally:
            handle.remove()
    return [after - before for before, after in zip([0, *running_totals], running_totals)]


def loglog_slope(x: Sequence[float], y: Sequence[float], x_min: float | None = None) -> float:
    """The exponent k of a power law y ≈ c · x^k: a least-squares line through (log x, log y), `numpy.polyfit`.

    Only points with x >= `x_min` are used (all when None): costs made of several powers, like D·t + A·t², show
    their leading power only at large x, and the fit should look where that power has taken over.
    """
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.ndim != 1 or xs.shape != ys.shape:
        raise ValueError(f"x and y must be 1-D and of equal length, got shapes {xs.shape} and {ys.shape}")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys)) and np.all(xs > 0) and np.all(ys > 0)):
        raise ValueError("x and y must be finite and > 0 to take logarithms")
    keep = xs >= x_min if x_min is not None else np.ones(xs.shape, dtype=bool)
    if np.unique(xs[keep]).size < 2:
        raise ValueError(f"need at least 2 distinct x >= x_min={x_min!r} to fit a slope, got {xs[keep].tolist()}")
    slope, _intercept = np.polyfit(np.log(xs[keep]), np.log(ys[keep]), 1)
    return float(slope)


# --- chapter 05: roofline and the two phases, measured ---


def median_seconds(fn: Callable[[], object] | Mapping[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                   device: torch.device | str = "cpu", *, self_timed: bool = False) -> float | dict[str, float]:
    """Median wall-clock seconds of ``fn()`` over `repeats` runs, after `warmup` untimed runs.

    The warm-up pays one-off costs (allocations, kernel selection, caches); the median ignores a run that the
    operating system interrupted. On a GPU the clock waits for queued work (`torch.cuda.synchronize`).

    Given a mapping of names to functions, it times them *side by side* and returns each one's median: every round
    calls each function once, in turn, so a burst of load from another program slows all contenders of a ratio
    alike, not just one (`kvlab bench` takes every ratio this way). With `self_timed` each function times itself
    and returns its seconds (say, the median of the decode steps it ran), and the median of what it returned is kept.
    """
    fns = fn if isinstance(fn, Mapping) else {"fn": fn}
    if not fns:
        raise ValueError("fn must be a callable or a non-empty mapping of names to callables, got an empty mapping")
    for name, f in fns.items():
        check_type("fn" if fns is not fn else f"fn[{name!r}]", f, Callable, "a callable taking no arguments")
    check_int("repeats", repeats, 1)
    check_int("warmup", warmup, 0)
    check_bool("self_timed", self_timed)
    device = torch.device(device)
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            start = _clock(device)
            result = f()
            times[name].append(float(result) if self_timed else _clock(device) - start)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    return medians if fns is fn else medians["fn"]


@torch.inference_mode()
def measure_peak_flops(n: int | None = None, repeats: int = 5, *, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of this machine's matrix multiply: an n×n by n×n product (2n³ FLOPs), median of `repeats` runs.

    A large GEMM is the most compute-friendly work there is (intensity ~ n/6 FLOP/byte in fp32), so it measures
    the compute roof as well as a quick test can; vendor peaks are usually somewhat higher. `n` defaults to 1024
    on a CPU (about 2 GFLOP a run) and 8192 on a GPU (a smaller product would leave a GPU partly idle).
    """
    device = torch.device(device)
    check_type("dtype", dtype, torch.dtype, "a floating torch.dtype such as torch.float32")
    check_one_of("dtype", dtype, (torch.float64, torch.float32, torch.bfloat16, torch.float16))
    n = check_int("n", (8192 if device.type == "cuda" else 1024) if n is None else n, 1)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    seconds = median_seconds(lambda: torch.mm(a, b), repeats, warmup=1, device=device)
    return 2 * n**3 / seconds


@torch.inference_mode()
def measure_bandwidth(n_bytes: int | None = None, repeats: int = 5, *, device: torch.device | str = "cpu",
                      kind: str = "copy") -> float:
    """Bytes/s of this machine's memory, median of `repeats` runs over one `n_bytes` float32 buffer.

    ``kind="copy"`` copies the buffer into another: it reads `n_bytes` and writes `n_bytes`, so it counts
    2 · n_bytes per run (the convention of the STREAM benchmark's "Copy"). ``kind="read"`` sums the buffer: it reads
    every byte once and writes almost nothing, as a decode step does with its weights, so it counts n_bytes; that
    is the ceiling `kvlab bench` compares a decode step with (figure 4). The buffer must be far larger than the
    chip's caches, or this measures the cache: `n_bytes` defaults to 128 MiB on a CPU and 1 GiB on a GPU (`kvlab
    bench` reads 1 GiB on a CPU too, since some server CPUs have a last-level cache of several hundred MiB).
    """
    device = torch.device(device)
    n_bytes = check_int("n_bytes", (2**30 if device.type == "cuda" else 2**27) if n_bytes is None else n_bytes, 4)
    check_one_of("kind", kind, ("copy", "read"))
    source = torch.ones(n_bytes // 4, device=device, dtype=torch.float32)  # touched, so its pages are mapped
    if kind == "read":
        return source.nbytes / median_seconds(source.sum, repeats, warmup=1, device=device)
    target = torch.zeros_like(source)
    seconds = median_seconds(lambda: target.copy_(source), repeats, warmup=1, device=device)
    return 2 * source.nbytes / seconds


def last_level_cache_bytes(cache_dir: str | Path = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """Bytes of the largest data cache that CPU 0 sees, as Linux reports it; None where it is not reported.

    Weights larger than this cannot stay on chip between forwards, so every decode step streams them from main
    memory. Sizes vary from a few MiB (laptops) to hundreds (some server CPUs), hence read it, do not assume it.
    """
    sizes = {}
    for index in Path(cache_dir).glob("index*"):
        try:
            level, kind = int((index / "level").read_text()), (index / "type").read_text().strip()
            size = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue  # an entry the kernel leaves out: skip it rather than guess
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
        if kind != "Instruction" and size.rstrip("KMG").isdigit():
            sizes[level] = int(size.rstrip("KMG")) * scale
    return sizes[max(sizes)] if sizes else None


@dataclass(frozen=True)
class PhaseTimes:
    """Measured time of the two phases of one generation, with the FLOPs and bytes they must do (per forward).

    `prefill_s` is the median time to first token (a forward over `batch_size` × `prompt_len` tokens);
    `decode_s` the median time of one decode step (time per output token; each step yields `batch_size` tokens).
    FLOPs and bytes come from `kvlab.flops.forward_flops` and `kvlab.flops.bytes_moved`; for the decode steps,
    whose caches hold prompt_len, ..., prompt_len + n_decode - 1 tokens, they are those of the middle step.
    """

    prompt_len: int
    batch_size: int
    n_decode: int
    prefill_s: float
    decode_s: float
    prefill_flops: int
    prefill_bytes: int
    decode_flops: int
    decode_bytes: int

    @property
    def decode_tokens_per_s(self) -> float:
        """Throughput while decoding: every step gives each of the batch_size rows one token."""
        return self.batch_size / self.decode_s

    @property
    def prefill_intensity(self) -> float:
        return self.prefill_flops / self.prefill_bytes

    @property
    def decode_intensity(self) -> float:
        return self.decode_flops / self.decode_bytes

    @property
    def prefill_flops_per_s(self) -> float:
        """Achieved FLOP/s of the prefill, the height of its point on a roofline."""
        return self.prefill_flops / self.prefill_s

    @property
    def decode_flops_per_s(self) -> float:
        return self.decode_flops / self.decode_s


def time_phases(model: TinyGPT, prompt_len: int, batch_size: int = 1, n_decode: int = 8, repeats: int = 3,
                warmup: int = 1, seed: int = 0) -> PhaseTimes:
    """Time prefill and decode of `model` with `time_generation` (so through `kvlab.generate(..., return_stats=True)`).

    Each run generates ``n_decode + 1`` greedy tokens after `batch_size` random prompts of `prompt_len` tokens:
    the first token ends the prefill, the other `n_decode` are decode steps. `prefill_s` is the median over
    `repeats` runs (after `warmup` untimed ones), `decode_s` the median over the steps of each step's median.
    Medians make the numbers robust to an interrupted run; they still vary between runs and machines.
    """
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    check_int("prompt_len", prompt_len, 1)  # time_generation checks the others
    check_int("n_decode", n_decode, 1)
    config = model.config
    if prompt_len + n_decode + 1 > config.max_seq_len:
        raise ValueError(f"prompt_len + n_decode + 1 = {prompt_len + n_decode + 1} exceeds the model's "
                         f"max_seq_len={config.max_seq_len}")
    stats = time_generation(model, prompt_len, n_decode + 1, repeats=repeats, warmup=warmup, batch_size=batch_size,
                            seed=seed)  # chapter 1's timer: per-step medians over the repeats
    b, middle = next(model.parameters()).element_size(), prompt_len + (n_decode - 1) // 2
    return PhaseTimes(
        prompt_len=prompt_len, batch_size=batch_size, n_decode=n_decode,
        prefill_s=stats.prefill_s, decode_s=statistics.median(stats.decode_s),
        prefill_flops=batch_size * forward_flops(config, prompt_len, 0),
        prefill_bytes=bytes_moved(config, prompt_len, 0, b, batch_size),
        decode_flops=batch_size * forward_flops(config, 1, middle),
        decode_bytes=bytes_moved(config, 1, middle, b, batch_size),
    )


def sweep_phases(model: TinyGPT, prompt_lens: Sequence[int] = (16, 64, 256), batch_sizes: Sequence[int] = (1,),
                 n_decode: int = 8, repeats: int = 3, warmup: int = 1, progress: bool = False) -> list[PhaseTimes]:
    """`time_phases` for every (prompt_len, batch_size) pair, prompt lengths outermost; `progress` shows a bar.

    Only the first pair gets `warmup` untimed runs (they pay the process's one-off costs); later pairs rely on
    their median. The bar (tqdm) prints timings, so a notebook cell that shows it must not be compared by nbval.
    """
    pairs = [(p, b) for p in prompt_lens for b in batch_sizes]
    if not pairs:
        raise ValueError(f"prompt_lens and batch_sizes must not be empty, got {prompt_lens!r} and {batch_sizes!r}")
    if progress:
        from tqdm.auto import tqdm  # only when asked: keeps tqdm out of plain imports

        pairs = tqdm(pairs, desc="timing prefill and decode")
    return [time_phases(model, p, b, n_decode, repeats, warmup if i == 0 else 0) for i, (p, b) in enumerate(pairs)]

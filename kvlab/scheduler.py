"""A request scheduler: static against continuous batching, with chunked prefill and preemption (chapter 10).

A server receives requests at random times, each with its own prompt and answer length. Every *step* it runs one
forward of the model over a batch of rows, and the scheduler decides which requests those rows are.

**Static batching** starts a batch of up to `max_batch` waiting requests together and runs it until its last
request finishes; requests that arrive meanwhile wait, and rows that finish early leave the batch half empty.
**Continuous (iteration-level) batching** (Yu et al. 2022, "Orca: A Distributed Serving System for Transformer-Based
Generative Models") decides again at every step: finished requests leave and free their blocks, waiting ones join
when the block pool has room. Same model, same requests: only the decision of who runs each step differs.

**Chunked prefill** (Agrawal et al. 2023/2024, "SARATHI" and "Sarathi-Serve") feeds a long prompt at most
`chunk_size` tokens per step, so one long prompt does not make every decoding request wait for a whole long forward.

**Preemption.** Blocks are handed out as requests grow (`kvlab.paged_cache`, Kwon et al. 2023, the vLLM paper), so
requests admitted together can outgrow the pool. The scheduler then preempts the request admitted last. vLLM offers
two remedies: *swap* its blocks to CPU memory and back, or *recompute*: drop its blocks, put it back at the head of
the queue, and later prefill its prompt plus the tokens it has generated so far. We recompute, as vLLM does by
default for single sequences: it needs no second memory tier, and re-prefilling is a parallel, compute-bound forward
(chapter 5), which the vLLM paper measured never much slower than swapping, and faster for small blocks, whose many
small copies waste the CPU-GPU bus. It also keeps correctness easy to see: a resumed request is a longer prompt.

**Design choices where the issue is silent.**
- *One real forward per step over rows of different lengths.* `PagedCache` keeps one length for all its rows, so it
  cannot hold a ragged batch. Each request therefore owns a one-row `PagedCache`; all of them share one `BlockPool`,
  whose blocks are the real memory and the accounting (a request holds ceil(cached tokens / block_size) blocks).
  For a step, `RaggedBatch` presents the rows' caches as one cache to `TinyGPT`: rows are right-aligned and the
  gaps are hidden by the model's `attention_mask`, the same mechanism as `generate_batch`'s left padding. So every
  step is one forward over the batch, mixing 1-token decodes and prefill chunks; greedy tokens equal `kvlab.generate`
  on each request alone. (Production kernels skip the padding: they read each row's blocks in place.)
- *The clock counts steps*, so runs are deterministic and comparable on any machine; wall time is also recorded.
  Arrivals are in steps too, so wall-time latencies measure how long the steps took, not a real-time load. A step
  counts 1 however many tokens it feeds, so chunked prefill's gain (no step is one long prompt) shows only in wall
  time; in steps, chunking only delays the first token of a long prompt.
- *Static batching* still frees a finished row's blocks (generous to it), but admits nobody until its batch is done.
- *Admission* is first come, first served: a waiting request joins if its next chunk's blocks fit; no request
  overtakes an earlier one. A step that preempted admits nobody (the pool is full; admitting would thrash).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .cache import Cache
from .checks import check_int, check_one_of, check_type
from .model import TinyGPT
from .paged_cache import BlockPool, PagedCache

__all__ = ["Request", "make_request_stream", "RaggedBatch", "RequestMetrics", "ScheduleResult", "Scheduler",
           "run_schedule"]


@dataclass(frozen=True)
class Request:
    """What a client sends: a prompt (token ids), how many tokens to generate, and the step it arrives at."""

    id: int
    prompt: tuple[int, ...]
    max_new_tokens: int
    arrival: int  # the step at which the server first sees it


def make_request_stream(n: int, seed: int = 0, *, corpus_ids: Sequence[int] | None = None, vocab_size: int = 32,
                        prompt_len: tuple[int, int] = (4, 40), new_tokens: tuple[int, int] = (2, 48),
                        mean_gap: float = 2.0) -> list[Request]:
    """`n` requests with random prompt lengths, output lengths and arrival steps: the same list for the same seed.

    Prompts are slices of `corpus_ids` (e.g. a tokenised text, so a trained model sees text it knows), or random ids
    below `vocab_size` when no corpus is given. Lengths are uniform in the inclusive ranges `prompt_len` and
    `new_tokens`; the gaps between arrivals are exponential with mean `mean_gap` steps (a Poisson process, the
    usual model of independent clients), rounded down to whole steps.
    """
    n, seed = check_int("n", n, 1), check_int("seed", seed)
    lo_p, hi_p = (check_int(f"prompt_len[{i}]", v, 1) for i, v in enumerate(prompt_len))
    lo_n, hi_n = (check_int(f"new_tokens[{i}]", v, 1) for i, v in enumerate(new_tokens))
    if lo_p > hi_p or lo_n > hi_n:
        raise ValueError(f"prompt_len and new_tokens must be (low, high) with low <= high, got {prompt_len} and "
                         f"{new_tokens}")
    if not (isinstance(mean_gap, (int, float)) and not isinstance(mean_gap, bool) and mean_gap >= 0):
        raise ValueError(f"mean_gap must be a number of steps >= 0, got {mean_gap!r}")
    if corpus_ids is not None and len(corpus_ids) < hi_p:
        raise ValueError(f"corpus_ids holds {len(corpus_ids)} tokens, fewer than the longest prompt ({hi_p})")
    vocab_size = check_int("vocab_size", vocab_size, 1)
    rng, arrival, stream = random.Random(seed), 0.0, []
    for i in range(n):
        length = rng.randint(lo_p, hi_p)
        if corpus_ids is None:
            prompt = tuple(rng.randrange(vocab_size) for _ in range(length))
        else:
            start = rng.randrange(len(corpus_ids) - length + 1)
            prompt = tuple(int(t) for t in corpus_ids[start:start + length])
        stream.append(Request(i, prompt, rng.randint(lo_n, hi_n), int(arrival)))
        arrival += rng.expovariate(1 / mean_gap) if mean_gap > 0 else 0.0
    return stream


class RaggedBatch(Cache):
    """One step's rows, each with its own `PagedCache` and length, shown to the model as one cache.

    Row b holds L_b = past_b + n_b tokens after this step (n_b new ones). Rows are right-aligned in a width
    W = max L_b, and the attention mask (1 = real) hides the gap on the left of the shorter rows, so each row attends
    to exactly its own tokens at its own positions (`kvlab.masks.padding_mask` counts positions from the mask). The
    model is fed T = max n_b new columns; row b's newest n_b tokens are the last n_b columns, and the model's
    outputs at its other T - n_b columns are ignored (their K/V are not stored).

    All rows' blocks live in one pool, so each layer's `update` is two batched index operations, as in a paged
    attention kernel: write every row's new K/V into their slots, then read every row's W slots through the block
    tables (the gap reads the row's first slot; the mask hides it): one operation per layer, not one per row.
    Requests share no blocks here (no prefix caching), so no block needs a copy before it is written.
    """

    def __init__(self, caches: list[PagedCache], n_new: list[int]) -> None:
        self.caches, self.pool = caches, caches[0].pool
        past = torch.tensor([c.get_seq_length() for c in caches])  # (B,)
        self.lengths = past + torch.tensor(n_new)  # L_b after this step
        self.width, self.n_fed = int(self.lengths.max()), max(n_new)  # W and T
        tables = self._allocate()  # (B, blocks of the longest row): logical block -> physical block
        block_size, device = self.pool.block_size, self.pool.keys[0].device
        # where the fed columns' tokens go: column t of row b is position L_b - T + t; only the last n_b are new
        positions = self.lengths[:, None] - self.n_fed + torch.arange(self.n_fed)  # (B, T)
        self.is_new = (positions >= past[:, None]).to(device)  # (B, T)
        positions = positions[positions >= past[:, None]]  # (N,): every new token of every row, row by row
        rows = torch.arange(len(caches)).repeat_interleave(torch.tensor(n_new))
        self.write = (tables[rows, positions // block_size].to(device), (positions % block_size).to(device))
        # what attention reads: column w of row b is position w - (W - L_b); the gap (< 0) reads position 0
        positions = (torch.arange(self.width) - (self.width - self.lengths)[:, None]).clamp(min=0)  # (B, W)
        self.read = (tables.gather(1, positions // block_size).to(device), (positions % block_size).to(device))

    def _allocate(self) -> torch.Tensor:
        """Give every row the blocks its L_b tokens need (ceil(L_b / block_size)); return the padded block tables."""
        block_size = self.pool.block_size
        missing = [-(-int(n) // block_size) - len(c.block_tables[0] if c.block_tables else []) for c, n in
                   zip(self.caches, self.lengths)]
        if sum(missing) > self.pool.n_free:  # the scheduler preempts before this can happen
            raise ValueError(f"the block pool is exhausted: this step needs {sum(missing)} more blocks, "
                             f"{self.pool.n_free} of {self.pool.n_blocks} free")
        for cache, n in zip(self.caches, missing):
            cache.block_tables = cache.block_tables or [[]]  # one row per request
            cache.block_tables[0].extend(self.pool.allocate(n))
        longest = max(len(c.block_tables[0]) for c in self.caches)
        return torch.tensor([c.block_tables[0] + [0] * (longest - len(c.block_tables[0])) for c in self.caches])

    def attention_mask(self, device: torch.device | None = None) -> torch.Tensor:
        """(B, W): 0 for the gap on the left of each row, 1 for its real tokens."""
        return (torch.arange(self.width) >= self.width - self.lengths[:, None]).long().to(device)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        k_pool, v_pool = self.pool.keys[layer_idx], self.pool.values[layer_idx]  # (n_blocks, H_kv, block_size, D)
        k_pool[self.write[0], :, self.write[1]] = key.transpose(1, 2)[self.is_new]  # (N, H_kv, D): new tokens
        v_pool[self.write[0], :, self.write[1]] = value.transpose(1, 2)[self.is_new]
        for cache, length in zip(self.caches, self.lengths.tolist()):
            cache.lengths[layer_idx] = length
        k, v = k_pool[self.read[0], :, self.read[1]], v_pool[self.read[0], :, self.read[1]]  # (B, W, H_kv, D)
        return k.transpose(1, 2), v.transpose(1, 2)  # (B, H_kv, W, D)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width - self.n_fed  # the model places its T new columns after these

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        raise NotImplementedError("a RaggedBatch lives for one scheduler step; it has no beams to reorder")

    def reset(self) -> None:
        for cache in self.caches:
            cache.reset()

    @property
    def nbytes(self) -> int:
        return sum(cache.nbytes for cache in self.caches)


@dataclass
class RequestMetrics:
    """What happened to one request. Steps count from 0; a token made in step s is ready at time s + 1."""

    id: int
    arrival: int
    prompt_len: int
    tokens: list[int] = field(default_factory=list)  # the generated token ids
    first_token_step: int | None = None  # the clock when the first token was ready
    finish_step: int | None = None
    preemptions: int = 0
    arrival_s: float = math.nan  # wall-clock seconds since the run began
    first_token_s: float = math.nan
    finish_s: float = math.nan

    @property
    def ttft_steps(self) -> int:
        """Time to first token, in steps: the wait in the queue plus the prefill."""
        return self.first_token_step - self.arrival

    @property
    def tpot_steps(self) -> float:
        """Time per output token after the first, in steps (1.0 unless the request was preempted and waited)."""
        return self._per_later_token(self.finish_step - self.first_token_step)

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        return self._per_later_token(self.finish_s - self.first_token_s)

    def _per_later_token(self, elapsed: float) -> float:
        """`elapsed` spread over the tokens after the first (NaN for a one-token answer: no later token)."""
        return elapsed / (len(self.tokens) - 1) if len(self.tokens) > 1 else math.nan


def _percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default); NaN if empty."""
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return math.nan
    rank = (len(values) - 1) * q / 100
    low = math.floor(rank)
    return values[low] + (values[min(low + 1, len(values) - 1)] - values[low]) * (rank - low)


@dataclass
class ScheduleResult:
    """A finished run: every request's metrics (by id), blocks in use after every step, and the clocks."""

    policy: str
    requests: list[RequestMetrics]
    blocks_in_use: list[int]  # pool blocks allocated after each step (index s: after step s)
    batch_sizes: list[int]  # rows in each step's forward (0: an idle step, nobody to serve)
    n_blocks: int
    steps: int  # steps until the last request finished, idle steps included (throughput is per step of this clock)
    forwards: int  # steps that ran the model
    wall_s: float

    @property
    def output_tokens(self) -> int:
        return sum(len(r.tokens) for r in self.requests)

    @property
    def preemptions(self) -> int:
        return sum(r.preemptions for r in self.requests)

    def summary(self) -> dict[str, float]:
        """The run's figures in one dict: throughput, TTFT and TPOT (mean, p50, p90; in steps and seconds), peak
        blocks. Percentiles show the tail, which a mean hides: a few preempted or long-queued requests."""
        out = dict(steps=self.steps, forwards=self.forwards, output_tokens=self.output_tokens,
                   tokens_per_step=self.output_tokens / self.steps,
                   tokens_per_s=self.output_tokens / self.wall_s if self.wall_s > 0 else math.nan,
                   peak_blocks=max(self.blocks_in_use, default=0), preemptions=self.preemptions)
        for name in ("ttft_steps", "tpot_steps", "ttft_s", "tpot_s"):
            values = [getattr(r, name) for r in self.requests]
            finite = [v for v in values if not math.isnan(v)]
            out[f"mean_{name}"] = sum(finite) / len(finite) if finite else math.nan
            out[f"p50_{name}"], out[f"p90_{name}"] = _percentile(values, 50), _percentile(values, 90)
        return out


class _Sequence:
    """A request inside the server: its tokens so far, how many of them its cache holds, and its metrics."""

    def __init__(self, request: Request, pool: BlockPool, arrival_s: float) -> None:
        self.request, self.cache = request, PagedCache(pool)
        self.tokens = list(request.prompt)  # prompt + generated: after a preemption all of it is prefilled again
        self.n_cached = 0
        self.metrics = RequestMetrics(request.id, request.arrival, len(request.prompt), arrival_s=arrival_s)

    def n_next(self, chunk_size: int | None) -> int:
        """Tokens to feed this step: the next prefill chunk, or 1 (the newest token) when decoding."""
        uncached = len(self.tokens) - self.n_cached
        return uncached if chunk_size is None else min(chunk_size, uncached)

    def blocks_needed(self, chunk_size: int | None) -> int:
        """New blocks this step's feed takes: a request holds ceil(cached tokens / block_size) blocks."""
        block_size = self.cache.pool.block_size
        after = self.n_cached + self.n_next(chunk_size)
        return -(-after // block_size) - -(-self.n_cached // block_size)

    @property
    def done(self) -> bool:
        return len(self.metrics.tokens) == self.request.max_new_tokens


class Scheduler:
    """Runs a stream of requests through `model`, one forward per step, under a batching `policy`.

    `policy`: "static" or "continuous". `max_batch`: the most requests in one step's batch. `n_blocks` and
    `block_size` size the block pool (the KV memory). `chunk_size`: the most prompt tokens a request feeds per step
    (None: its whole prompt at once). Greedy decoding; each request's tokens equal `kvlab.generate` on it alone.
    """

    def __init__(self, model: TinyGPT, *, policy: str = "continuous", max_batch: int = 8, n_blocks: int = 64,
                 block_size: int = 16, chunk_size: int | None = None) -> None:
        if not (isinstance(model, torch.nn.Module) and hasattr(model, "config")):
            raise TypeError(f"model must be a kvlab model such as TinyGPT, got {type(model).__name__}")
        self.model, self.policy = model, check_one_of("policy", policy, ("static", "continuous"))
        self.max_batch = check_int("max_batch", max_batch, 1)
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size, 1)
        weight = model.wte.weight
        self.pool = BlockPool(model.config, check_int("n_blocks", n_blocks, 1), check_int("block_size", block_size, 1),
                              dtype=weight.dtype, device=weight.device)

    def run(self, requests: Sequence[Request]) -> ScheduleResult:
        """Serve every request; returns each one's tokens and metrics, and the run's clocks and block counts."""
        self._check_requests(requests)
        self.pending = sorted(requests, key=lambda r: (r.arrival, r.id))  # not arrived yet
        self.waiting: list[_Sequence] = []  # arrived, not running: first come, first served
        self.running: list[_Sequence] = []  # in the batch, oldest admission first
        self.finished: list[_Sequence] = []
        self.clock, self.forwards, self.blocks_in_use, self.batch_sizes = 0, 0, [], []
        self.start = _now(self.pool.keys[0].device)
        while self.pending or self.waiting or self.running:
            self.step()
        metrics = sorted((s.metrics for s in self.finished), key=lambda m: m.id)
        return ScheduleResult(self.policy, metrics, self.blocks_in_use, self.batch_sizes, self.pool.n_blocks,
                              self.clock, self.forwards, _now(self.pool.keys[0].device) - self.start)

    def step(self) -> None:
        """One iteration: arrivals queue up, the batch is chosen (preempting if the pool is short), one forward."""
        now = _now(self.pool.keys[0].device) - self.start
        while self.pending and self.pending[0].arrival <= self.clock:
            self.waiting.append(_Sequence(self.pending.pop(0), self.pool, now))
        preempted = self._make_room()
        if not preempted and (self.policy == "continuous" or not self.running):  # static: only an empty batch
            self._admit()
        self.batch_sizes.append(len(self.running))
        if self.running:
            self._forward()
        self.blocks_in_use.append(self.pool.n_allocated)
        self.clock += 1

    def _make_room(self) -> bool:
        """Preempt the newest running requests until the others' next feeds fit in the pool (recompute: see the
        module docstring). The oldest always fits: `run` checked that every request fits the pool alone."""
        preempted = False
        while sum(s.blocks_needed(self.chunk_size) for s in self.running) > self.pool.n_free:
            victim = self.running.pop()  # admitted last: it has waited least and holds the least work
            victim.cache.reset()  # its blocks go back to the pool
            victim.n_cached = 0  # later: prefill prompt + generated tokens again
            victim.metrics.preemptions += 1
            self.waiting.insert(0, victim)  # first in line: it arrived before everyone still waiting
            preempted = True
        return preempted

    def _admit(self) -> None:
        """Waiting requests join, in order, while the batch has a free row and the pool has their blocks."""
        free = self.pool.n_free - sum(s.blocks_needed(self.chunk_size) for s in self.running)
        while self.waiting and len(self.running) < self.max_batch:
            need = self.waiting[0].blocks_needed(self.chunk_size)
            if need > free:
                break  # no overtaking: a later, smaller request would starve this one
            free -= need
            self.running.append(self.waiting.pop(0))

    @torch.inference_mode()
    def _forward(self) -> None:
        """One forward over every running row; rows whose feed reached their newest token get a greedy token."""
        n_new = [s.n_next(self.chunk_size) for s in self.running]
        width, device = max(n_new), self.pool.keys[0].device
        idx = torch.tensor([[0] * (width - n) + s.tokens[s.n_cached:s.n_cached + n]  # right-aligned new tokens
                            for s, n in zip(self.running, n_new)], device=device)  # (B, T)
        batch = RaggedBatch([s.cache for s in self.running], n_new)
        logits = self.model(idx, batch, batch.attention_mask(device))[:, -1, :]  # (B, vocab)
        next_tokens = logits.argmax(dim=-1).tolist()
        self.forwards += 1
        now = _now(device) - self.start
        for s, n, token in zip(list(self.running), n_new, next_tokens):
            s.n_cached += n
            if s.n_cached < len(s.tokens):
                continue  # a prefill chunk in the middle of the prompt: its last logit predicts a known token
            s.tokens.append(token)
            s.metrics.tokens.append(token)
            if s.metrics.first_token_step is None:
                s.metrics.first_token_step, s.metrics.first_token_s = self.clock + 1, now
            if s.done:
                s.metrics.finish_step, s.metrics.finish_s = self.clock + 1, now
                s.cache.reset()  # its blocks go back to the pool now, not at the end of a batch
                self.running.remove(s)
                self.finished.append(s)

    def _check_requests(self, requests: Sequence[Request]) -> None:
        """Refuse, before the first step, any request that could never run: it would stall the queue forever."""
        check_type("requests", requests, (list, tuple), "a list of Request")
        if not requests:
            raise ValueError("requests must hold at least one Request, got an empty list")
        ids = set()
        for r in requests:
            check_type("each request", r, Request, "a kvlab.scheduler.Request")
            if r.id in ids:
                raise ValueError(f"request ids must be unique, got id {r.id} twice")
            ids.add(r.id)
            check_int(f"request {r.id}'s max_new_tokens", r.max_new_tokens, 1)
            check_int(f"request {r.id}'s arrival", r.arrival, 0)
            vocab = self.model.config.vocab_size
            if not r.prompt or not all(type(t) is int and 0 <= t < vocab for t in r.prompt):
                raise ValueError(f"request {r.id}'s prompt must be a non-empty tuple of token ids in 0..{vocab - 1}, "
                                 f"got {r.prompt[:8]!r}{'...' if len(r.prompt) > 8 else ''}")
            total, limit = len(r.prompt) + r.max_new_tokens, self.model.config.max_seq_len
            if total > limit:
                raise ValueError(f"request {r.id}: prompt ({len(r.prompt)}) + max_new_tokens ({r.max_new_tokens}) "
                                 f"= {total} tokens exceeds the model's max_seq_len={limit}")
            blocks = -(-(total - 1) // self.pool.block_size)  # the last token is generated, never cached
            if blocks > self.pool.n_blocks:
                raise ValueError(f"request {r.id} needs {blocks} blocks of {self.pool.block_size} tokens "
                                 f"({total - 1} cached tokens) but the pool has only n_blocks={self.pool.n_blocks}; "
                                 "make the pool larger or the request shorter")


def _now(device: torch.device) -> float:
    """Wall-clock time after the device has finished its queued work (GPUs run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run_schedule(model: TinyGPT, requests: Sequence[Request], **settings) -> ScheduleResult:
    """``Scheduler(model, **settings).run(requests)``: one call per policy to compare them on the same stream."""
    return Scheduler(model, **settings).run(requests)

"""Inside one attention head: the q, k, v vectors the model really computes, and the sums it makes of them.

`trace_attention` runs the model once and records, for one head of one layer, the queries, keys and values
(each (T, D), D = head_dim) and that head's attention output (T, D) exactly as the model produced them. It reads
them with PyTorch forward hooks on the layer's own ``qkv`` and ``proj`` Linear layers, so nothing is recomputed by a
second copy of the model's code and ``model.py`` stays untouched.

`expand_attention_step` then redoes step t by hand, from q_t and the rows 1..t of K and V only:

    Att_t = softmax(q_t [k_1; ...; k_t]ᵀ / √D) [v_1; ...; v_t]

which is GPT-2's scaled dot-product attention (Vaswani et al. 2017, eq. 1; GPT-2 divides by the square root of the
*head* dimension, ``w / math.sqrt(v.size(-1))`` in its code, not of d_model). That it matches the model shows the
two facts a KV cache relies on: row t needs only q_t (so past queries are never needed again), and k_i, v_i depend
only on tokens 1..i (so they can be computed once and kept). `trace_with_perturbation` tests the first fact by
nudging chosen rows of q, k or v inside the running model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .checks import check_bool, check_int, check_number, check_one_of, check_tensor, check_type
from .model import TinyGPT

__all__ = ["AttentionTrace", "AttentionStep", "trace_attention", "expand_attention_step", "trace_with_perturbation",
           "output_change", "kv_prefix_change", "format_vectors", "cache_step_grid", "CELL_STATES"]


@dataclass(frozen=True)
class AttentionTrace:
    """One head of one layer, for every position of one sequence. Rows are positions 1..T (index 0..T-1)."""

    layer: int
    head: int  # query head
    kv_head: int  # the key/value head it reads: head // (n_head // n_kv_head); equal to head without GQA
    q: torch.Tensor  # (T, D) queries, as the model computed them
    k: torch.Tensor  # (T, D) keys
    v: torch.Tensor  # (T, D) values
    weights: torch.Tensor  # (T, T) softmax(q kᵀ / √D) under the causal mask, float64; row t sums to 1
    output: torch.Tensor  # (T, D) this head's attention output, taken from the model (the input of attn.proj)

    @property
    def seq_len(self) -> int:
        return self.q.shape[0]

    @property
    def head_dim(self) -> int:
        return self.q.shape[1]

    @property
    def scale(self) -> float:
        """GPT-2's factor 1/√head_dim that the scores are multiplied by."""
        return 1.0 / math.sqrt(self.head_dim)


@dataclass(frozen=True)
class AttentionStep:
    """Step t of attention written out: the numbers of Att_t = softmax(q_t Kᵀ/√D) V over positions 1..t. float64."""

    t: int  # 1-based position of the query
    q: torch.Tensor  # (D,) q_t
    keys: torch.Tensor  # (t, D) k_1..k_t
    values: torch.Tensor  # (t, D) v_1..v_t
    dots: torch.Tensor  # (t,) q_t · k_i
    scores: torch.Tensor  # (t,) q_t · k_i / √D
    weights: torch.Tensor  # (t,) softmax of the scores
    output: torch.Tensor  # (D,) Σ_i weights_i v_i

    def to_latex(self, digits: int = 2, show: int = 3) -> str:
        """The step as LaTeX (for ``IPython.display.Math``): the formula, then the same with this step's numbers.

        Vectors of more than `show` + 1 entries are shortened to their first `show` entries, an ellipsis and the
        last entry; weights and scores are always shown in full (there are t of them).
        """
        t, d = self.t, self.q.shape[0]
        idx = range(1, t + 1)
        ks = "; ".join(f"k_{{{i}}}" for i in idx)
        vs = "; ".join(f"v_{{{i}}}" for i in idx)
        dots = ",\\ ".join(_latex_number(x, digits) for x in self.dots.tolist())
        scores = ",\\ ".join(_latex_number(x, digits) for x in self.scores.tolist())
        terms = " + ".join(f"{w:.{digits}f}\\,v_{{{i}}}" for i, w in zip(idx, self.weights.tolist()))
        return ("\\begin{aligned}\n"
                f"\\mathrm{{Att}}_{{{t}}} &= \\operatorname{{softmax}}\\!\\Big(\\frac{{q_{{{t}}}\\,[{ks}]^\\top}}"
                f"{{\\sqrt{{{d}}}}}\\Big)\\,[{vs}] \\\\\n"
                f"&= \\operatorname{{softmax}}\\!\\big([{dots}]\\,/\\,{math.sqrt(d):g}\\big)\\,[{vs}] \\\\\n"
                f"&= \\operatorname{{softmax}}\\!\\big([{scores}]\\big)\\,[{vs}] \\\\\n"
                f"&= {terms} \\\\\n"
                f"&= {_latex_vector(self.output, digits, show)}\n"
                "\\end{aligned}")


def _latex_vector(x: torch.Tensor, digits: int, show: int) -> str:
    values = [_latex_number(value, digits) for value in x.tolist()]
    if len(values) > show + 1:
        values = values[:show] + ["\\dots"] + values[-1:]
    return "(" + ",\\ ".join(values) + ")"


def _rounded(x: float, digits: int) -> str:
    """`x` to `digits` decimals, writing a number that rounds to zero as 0 rather than -0."""
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _latex_number(x: float, digits: int) -> str:
    """`_rounded` for LaTeX: a negative number in braces, ``{-0.60}``, so that it is typeset as a signed number.

    After ``,\\ `` a bare ``-`` is read (by MathJax) as a binary minus, with space on both sides: "− 0.60".
    """
    text = _rounded(x, digits)
    return f"{{{text}}}" if text.startswith("-") else text


def _check_trace_arguments(model: TinyGPT, idx: torch.Tensor, layer: int, head: int, min_len: int = 1) -> None:
    """One sequence of token ids (1, T) with T >= min_len, for a TinyGPT, and a layer and query head it has."""
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    check_tensor("idx", idx, dim=2, what="one sequence of token ids of shape (1, seq_len)")
    if idx.shape[0] != 1 or idx.shape[1] < min_len:
        raise ValueError(f"idx must have shape (1, seq_len) with seq_len >= {min_len}, got {tuple(idx.shape)}")
    check_int("layer", layer, 0, model.config.n_layer - 1)
    check_int("head", head, 0, model.config.n_head - 1)


def _run_traced(model: TinyGPT, idx: torch.Tensor, layer: int, head: int,
                edit: Callable[[torch.Tensor], torch.Tensor] | None = None) -> AttentionTrace:
    """Run the model with hooks on layer `layer`: record (and optionally `edit`) qkv, record the head outputs.

    The public functions check their arguments (`_check_trace_arguments`) before they call this.
    """
    config = model.config
    attn = model.blocks[layer].attn
    seen: dict[str, torch.Tensor] = {}

    def after_qkv(module, inputs, qkv):  # qkv: (1, T, d_model + 2 * kv_dim), the layer's own projection
        if edit is not None:
            qkv = edit(qkv.clone())
        seen["qkv"] = qkv
        return qkv

    def before_proj(module, inputs):  # inputs[0]: (1, T, d_model), all heads' outputs side by side
        seen["y"] = inputs[0]

    hooks = [attn.qkv.register_forward_hook(after_qkv), attn.proj.register_forward_pre_hook(before_proj)]
    try:
        with torch.no_grad():
            model(idx)
    finally:
        for hook in hooks:
            hook.remove()

    T, D = idx.shape[1], config.head_dim
    kv_head = head // (config.n_head // config.n_kv_head)
    q, k, v = seen["qkv"][0].split(attn.split_sizes, dim=-1)
    q = q.view(T, config.n_head, D)[:, head]  # (T, D)
    k = k.view(T, config.n_kv_head, D)[:, kv_head]  # (T, D)
    v = v.view(T, config.n_kv_head, D)[:, kv_head]  # (T, D)
    output = seen["y"][0, :, head * D:(head + 1) * D]  # (T, D)
    scores = q.double() @ k.double().T / math.sqrt(D)  # (T, T)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return AttentionTrace(layer, head, kv_head, q.clone(), k.clone(), v.clone(), weights, output.clone())


def trace_attention(model: TinyGPT, idx: torch.Tensor, layer: int, head: int) -> AttentionTrace:
    """Run `model` on `idx` (1, T) once, without a cache, and record query head `head` of layer `layer`.

    With grouped-query attention (n_kv_head < n_head) the trace holds the K/V head that this query head reads,
    ``head // (n_head // n_kv_head)``, exactly as the model's ``repeat_interleave`` pairs them.
    """
    _check_trace_arguments(model, idx, layer, head)
    return _run_traced(model, idx, layer, head)


def expand_attention_step(trace: AttentionTrace, t: int) -> AttentionStep:
    """Step t (1-based) by hand, in float64, from q_t and rows 1..t of K and V only: nothing else is read.

    The result's `output` equals ``trace.output[t - 1]``, the model's own value, to float32 rounding (~1e-7).
    """
    check_type("trace", trace, AttentionTrace, "an AttentionTrace (from trace_attention)")
    check_int("t", t, 1, trace.seq_len)
    q = trace.q[t - 1].double()  # (D,)
    keys, values = trace.k[:t].double(), trace.v[:t].double()  # (t, D): the past and the present, no future
    dots = keys @ q  # (t,) one dot product per visible key
    scores = dots / math.sqrt(q.shape[0])
    exp = torch.exp(scores - scores.max())  # subtracting the max changes nothing but avoids overflow
    weights = exp / exp.sum()
    return AttentionStep(t, q, keys, values, dots, scores, weights, weights @ values)


def trace_with_perturbation(model: TinyGPT, idx: torch.Tensor, layer: int, head: int, *, tensor: str,
                            positions: Iterable[int], scale: float = 1.0, seed: int = 0) -> AttentionTrace:
    """Like `trace_attention`, but inside the running model add noise to rows `positions` (1-based) of q, k or v.

    `tensor` is "q" (rows of query head `head`), "k" or "v" (rows of the K/V head it reads). The noise is
    ``scale`` times standard normal numbers from a generator seeded with `seed`, so the experiment repeats exactly.
    Comparing the result's `output` with an unperturbed trace shows which rows of the attention output depend on
    which rows of q, k and v (see `output_change`).
    """
    _check_trace_arguments(model, idx, layer, head)
    check_one_of("tensor", tensor, ("q", "k", "v"))
    check_number("scale", scale)
    check_int("seed", seed, minimum=0)
    positions = [check_int("each position", position, 1, idx.shape[1]) for position in positions]
    if not positions:
        raise ValueError("positions must name at least one position (1-based)")
    config = model.config

    def edit(qkv: torch.Tensor) -> torch.Tensor:  # qkv: (1, T, d_model + 2 * kv_dim)
        D = config.head_dim
        kv_dim = config.n_kv_head * D
        kv_head = head // (config.n_head // config.n_kv_head)
        start = {"q": head * D, "k": config.d_model + kv_head * D, "v": config.d_model + kv_dim + kv_head * D}[tensor]
        rows = torch.tensor(positions) - 1
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(positions), D, generator=generator).to(qkv.device, qkv.dtype)
        qkv[0, rows, start:start + D] += scale * noise
        return qkv

    return _run_traced(model, idx, layer, head, edit)


def output_change(before: AttentionTrace, after: AttentionTrace) -> torch.Tensor:
    """(T,) the largest absolute change of each row of the head's output between two traces of the same sequence."""
    for name, trace in (("before", before), ("after", after)):
        check_type(name, trace, AttentionTrace, "an AttentionTrace")
    if before.output.shape != after.output.shape:
        raise ValueError(f"traces must have the same shape, got {tuple(before.output.shape)} and "
                         f"{tuple(after.output.shape)}")
    return (after.output - before.output).abs().amax(dim=-1)


def kv_prefix_change(model: TinyGPT, idx: torch.Tensor) -> float:
    """How much the keys and values of positions 1..t move when tokens t+1..T are appended: the largest |Δ|.

    For every prefix ``idx[:, :t]`` (t = 1..T-1), every layer and every K/V head, compares k_1..k_t and v_1..v_t
    computed from the prefix with the same rows computed from the whole of `idx`. The causal mask makes them equal
    in exact arithmetic, which is what lets a cache keep them; in floating point only rounding is left (kernels
    for different T may add in a different order), so the result is ~1e-6 in float32 and ~1e-15 in float64.
    """
    _check_trace_arguments(model, idx, 0, 0, min_len=2)
    config = model.config
    heads = [h * (config.n_head // config.n_kv_head) for h in range(config.n_kv_head)]  # one query head per K/V head
    largest = 0.0
    for layer in range(config.n_layer):
        for head in heads:
            whole = trace_attention(model, idx, layer, head)
            for t in range(1, idx.shape[1]):
                prefix = trace_attention(model, idx[:, :t], layer, head)
                for mine, full in ((prefix.k, whole.k), (prefix.v, whole.v)):
                    largest = max(largest, (mine - full[:t]).abs().max().item())
    return largest


def format_vectors(rows: torch.Tensor, labels: Iterable[str], digits: int = 2) -> str:
    """A (T, D) matrix as text, one labelled row per position, each number rounded to `digits` decimals."""
    labels = list(labels)
    check_tensor("rows", rows, dim=2, what="a 2-D tensor (T, D)")
    check_int("digits", digits, minimum=0)
    if len(labels) != rows.shape[0]:
        raise ValueError(f"labels must hold one label per row: {rows.shape[0]} rows, {len(labels)} labels")
    width = max(len(label) for label in labels) if labels else 0
    values = [[_rounded(x, digits) for x in row.tolist()] for row in rows]
    cell = max(len(x) for row in values for x in row) if values and values[0] else 0
    return "\n".join(f"{label:<{width}}  " + " ".join(x.rjust(cell) for x in row) for label, row in zip(labels, values))


# States of the cells (i, j) of the T×T score matrix at decode step t, for the "what a cache saves" pictures.
CELL_STATES = {
    0: "not reached yet (row i > t)",
    1: "masked: key j is after query i, never computed",
    2: "computed at an earlier step, not needed again",
    3: "recomputed: an earlier step already did this",
    4: "new row t: q_t · k_j with k_j read from the cache",
    5: "new row t: q_t · k_j with k_j computed this step",
}


def cache_step_grid(t: int, seq_len: int, use_cache: bool) -> list[list[int]]:
    """Which scores q_i · k_j step t computes (states in `CELL_STATES`), for a sequence of `seq_len` positions.

    Step t (1-based) feeds token t and predicts token t + 1; t = 0 is the state before the first step. Without a
    cache the step re-feeds tokens 1..t, so it computes all t(t+1)/2 unmasked scores of rows 1..t (each key
    recomputed too). With a cache it computes row t only: t scores, t - 1 of them against keys read from the cache.
    """
    check_int("seq_len", seq_len, minimum=1)
    check_int("t", t, 0, seq_len)
    check_bool("use_cache", use_cache)
    grid = []
    for i in range(1, seq_len + 1):
        row = []
        for j in range(1, seq_len + 1):
            if j > i:
                state = 1
            elif i > t:
                state = 0
            elif i < t:
                state = 2 if use_cache else 3
            else:
                state = 4 if use_cache and j < t else 5
            row.append(state)
        grid.append(row)
    return grid

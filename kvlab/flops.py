"""Analytic FLOPs of a GPT-2-style forward pass, with and without a KV cache. Pure Python: no torch needed.

Only matrix multiplications are counted (2 FLOPs per multiply-add, the convention of the scaling-law papers and of
``torch.utils.flop_counter``); LayerNorm, GELU, softmax and additions are O(T·d) and vanish next to them.
`config` is anything with ``n_layer, n_head, n_kv_head, d_model, vocab_size`` (a `GPTConfig` or a preset).

One forward of ``n_new`` tokens that attend to ``n_keys = n_past + n_new`` keys costs, per layer:

    qkv projection      2 · n_new · d · (d + 2 · n_kv_head · head_dim)
    scores  q kᵀ        2 · n_new · n_keys · d          (n_head heads of head_dim each)
    weights · v         2 · n_new · n_keys · d
    output projection   2 · n_new · d · d
    MLP (d -> 4d -> d)  2 · n_new · d · 4d · 2

plus the LM head, 2 · n_new · d · vocab_size. The attention terms count the full score matrix, as the kernels
compute it; the causal mask discards half of it without making it cheaper.
"""

from __future__ import annotations

from fractions import Fraction

from .checks import check_bool, check_int, check_number, check_type

__all__ = ["forward_flops_breakdown", "forward_flops", "generation_flops", "decode_step_flops",
           "split_dense_attention", "decode_step_flops_split", "decode_step_coefficients", "attention_crossover",
           "generation_flops_split", "DENSE_PARTS", "ATTENTION_PARTS",
           "n_params", "bytes_moved", "arithmetic_intensity", "positions_processed"]


# --- chapter 01: autoregressive generation ---


def positions_processed(prompt_len: int, n_new: int, use_cache: bool = True) -> list[int]:
    """Token positions the model computes at each step when `kvlab.generate` writes `n_new` tokens after a prompt.

    Step i (0-based) produces new token i + 1. Without a cache it re-feeds the whole sequence so far,
    ``prompt_len + i`` positions, so the steps sum to ``P·N + N(N−1)/2``, quadratic in N. With a cache step 0
    (*prefill*) feeds the ``P`` prompt tokens at once and every later step (*decode*) only the newest token, so the
    steps sum to ``P + N − 1``. The prompt is fresh: nothing of it is cached before the call.
    """
    check_int("prompt_len", prompt_len, 1)
    check_int("n_new", n_new, 1)
    check_bool("use_cache", use_cache)
    if use_cache:
        return [prompt_len] + [1] * (n_new - 1)
    return [prompt_len + i for i in range(n_new)]


# --- chapter 04: cost with and without a cache ---

DENSE_PARTS = ("qkv", "attn_proj", "mlp", "lm_head")  # token × weight matmuls: cost ∝ tokens fed
ATTENTION_PARTS = ("attn_scores", "attn_values")  # token × token matmuls: cost ∝ tokens fed × keys
_COST_FIELDS = ("n_layer", "n_head", "n_kv_head", "d_model", "vocab_size")  # what the FLOP counts read


def _shape(config, names: tuple[str, ...]) -> tuple[int, ...]:
    """The config's sizes, with an error naming what is missing (a config can be a GPTConfig or a ModelPreset)."""
    missing = [name for name in names if not hasattr(config, name)]
    if missing:
        raise TypeError(f"config must have {', '.join(names)} (a GPTConfig or a ModelPreset); "
                        f"{type(config).__name__} lacks {', '.join(missing)}")
    for name in names:
        check_int(f"config.{name}", getattr(config, name), 1)
    return tuple(getattr(config, name) for name in names)


def _checked_shape(config) -> tuple[int, int, int, int, int]:
    """(n_layer, n_head, n_kv_head, d_model, vocab_size), checked: heads must split d_model and group evenly."""
    n_layer, n_head, n_kv_head, d, vocab_size = _shape(config, _COST_FIELDS)
    if d % n_head:
        raise ValueError(f"config.d_model ({d}) must be divisible by config.n_head ({n_head})")
    if n_head % n_kv_head:
        raise ValueError(f"config.n_head ({n_head}) must be divisible by config.n_kv_head ({n_kv_head})")
    return n_layer, n_head, n_kv_head, d, vocab_size


def forward_flops_breakdown(config, n_new: int, n_past: int = 0) -> dict[str, int]:
    """FLOPs of one forward of `n_new` tokens over `n_past` cached ones, by kind of matmul (all layers summed)."""
    check_int("n_new", n_new, 1)
    check_int("n_past", n_past, 0)
    n_layer, n_head, n_kv_head, d, vocab_size = _checked_shape(config)
    kv_dim = n_kv_head * (d // n_head)
    n_keys = n_past + n_new
    return {
        "qkv": n_layer * 2 * n_new * d * (d + 2 * kv_dim),
        "attn_scores": n_layer * 2 * n_new * n_keys * d,
        "attn_values": n_layer * 2 * n_new * n_keys * d,
        "attn_proj": n_layer * 2 * n_new * d * d,
        "mlp": n_layer * 2 * n_new * d * 4 * d * 2,
        "lm_head": 2 * n_new * d * vocab_size,
    }


def forward_flops(config, n_new: int, n_past: int = 0) -> int:
    """Total FLOPs of one forward of `n_new` new tokens over `n_past` cached tokens."""
    return sum(forward_flops_breakdown(config, n_new, n_past).values())


def decode_step_flops(config, t: int, use_cache: bool = True) -> int:
    """FLOPs to produce the next token when the sequence holds `t` tokens.

    With a cache only the newest token is fed (n_new = 1 over t - 1 cached): linear in t, through attention only.
    Without one all t tokens are recomputed: the projections and MLP grow like t, attention like t².
    """
    check_int("t", t, 1)
    check_bool("use_cache", use_cache)
    return forward_flops(config, 1, t - 1) if use_cache else forward_flops(config, t, 0)


def generation_flops(config, prompt_len: int, n_new: int, use_cache: bool = True) -> int:
    """Total FLOPs to generate `n_new` tokens after a prompt of `prompt_len`, as `kvlab.generate` does it.

    The first token comes from a forward over the prompt (prefill); each later token from one decode step:
    ``forward_flops(config, prompt_len) + Σ decode_step_flops(config, t)`` for t = prompt_len+1 .. prompt_len+n_new-1.
    That sum is taken in closed form (`generation_flops_split`), exactly, so a million tokens cost no more than ten.
    """
    return sum(generation_flops_split(config, prompt_len, n_new, use_cache).values())


def split_dense_attention(breakdown: dict[str, int]) -> dict[str, int]:
    """Group a `forward_flops_breakdown` into ``{"dense": ..., "attention": ...}``.

    The two groups scale differently, which is the whole story of this module's chapter: a *dense* matmul multiplies
    each fed token by a weight matrix (cost ∝ tokens fed); an *attention* matmul pairs each fed token with every key
    (cost ∝ tokens fed × keys).
    """
    check_type("breakdown", breakdown, dict, "a dict from forward_flops_breakdown")
    expected = set(DENSE_PARTS) | set(ATTENTION_PARTS)
    if set(breakdown) != expected:
        raise ValueError(f"breakdown must have the keys {sorted(expected)} (from forward_flops_breakdown), "
                         f"got {sorted(breakdown)}")
    return {"dense": sum(breakdown[k] for k in DENSE_PARTS), "attention": sum(breakdown[k] for k in ATTENTION_PARTS)}


def decode_step_flops_split(config, t: int, use_cache: bool = True) -> dict[str, int]:
    """`decode_step_flops`, split into its dense and attention parts (they sum to it)."""
    _shape(config, _COST_FIELDS)
    check_int("t", t, 1)
    check_bool("use_cache", use_cache)
    breakdown = forward_flops_breakdown(config, 1, t - 1) if use_cache else forward_flops_breakdown(config, t, 0)
    return split_dense_attention(breakdown)


def decode_step_coefficients(config) -> tuple[int, int]:
    """``(dense, per_key)``: the two numbers that fix the cost of every decode step, exactly.

    With a cache the step at length t feeds 1 token against t keys; without one, t tokens against t keys. From
    `forward_flops_breakdown` (dense ∝ tokens fed, attention ∝ tokens fed × keys) it follows that, for every t >= 1,

        decode_step_flops(config, t, use_cache=True)  == dense + per_key · t
        decode_step_flops(config, t, use_cache=False) == t · (dense + per_key · t)

    so without a cache a step costs exactly t times more. Both numbers are read off a forward of one token with one
    key: dense = 2·n_layer·(d·(d + 2·kv_dim) + d² + 8d²) + 2·d·vocab_size, per_key = 4·n_layer·d.
    """
    _shape(config, _COST_FIELDS)  # a clear error for a config that is not one
    parts = split_dense_attention(forward_flops_breakdown(config, 1, 0))
    return parts["dense"], parts["attention"]


def attention_crossover(config, include_lm_head: bool = True) -> Fraction:
    """The length t* at which a decode step spends as many FLOPs on attention as on all dense matmuls.

    Attention / dense = per_key · t / dense = t / t*, with and without a cache alike, so t* = dense / per_key.
    Multi-head attention (kv_dim = d): per layer 4·t·d against 24·d², so t* = 6·d_model; the LM head, paid once
    and not per layer, adds vocab_size / (2·n_layer). With grouped-query attention the qkv projection is smaller:
    t* = 5·d_model + kv_dim (+ vocab_size / (2·n_layer)). Returned exactly, as a Fraction.
    """
    check_bool("include_lm_head", include_lm_head)
    dense, per_key = decode_step_coefficients(config)
    if not include_lm_head:
        dense -= forward_flops_breakdown(config, 1, 0)["lm_head"]
    return Fraction(dense, per_key)


def generation_flops_split(config, prompt_len: int, n_new: int, use_cache: bool = True) -> dict[str, int]:
    """`generation_flops` in closed form, split into dense and attention parts (they sum to it exactly).

    The forwards see the lengths P (prefill, P = prompt_len) and then t = P+1, ..., P+n_new-1. With the step costs
    of `decode_step_coefficients` (D = dense, A = per_key) and sums over those t:

        with a cache      D·P + A·P²  +  Σ (D + A·t)       = D·(P + n_new - 1) + A·(P² + Σ t)
        without a cache   D·P + A·P²  +  Σ (D·t + A·t²)    = D·(P + Σ t)       + A·(P² + Σ t²)

    For a 1-token prompt and T new tokens: D·T + A·T(T+1)/2 with a cache, D·T(T+1)/2 + A·T(T+1)(2T+1)/6 without,
    i.e. ∝ T + T² against ∝ T² + T³. Closed form, so it stays instant for the millions of tokens a widget asks for.
    """
    check_int("prompt_len", prompt_len, 1)
    check_int("n_new", n_new, 1)
    check_bool("use_cache", use_cache)
    dense, per_key = decode_step_coefficients(config)
    first, last = prompt_len + 1, prompt_len + n_new - 1  # the decode steps' lengths (none when n_new == 1)

    def sum_t(m: int) -> int:  # 1 + 2 + ... + m
        return m * (m + 1) // 2

    def sum_t2(m: int) -> int:  # 1² + 2² + ... + m²
        return m * (m + 1) * (2 * m + 1) // 6

    s1 = sum_t(last) - sum_t(first - 1)
    s2 = sum_t2(last) - sum_t2(first - 1)
    if use_cache:
        return {"dense": dense * (prompt_len + n_new - 1), "attention": per_key * (prompt_len ** 2 + s1)}
    return {"dense": dense * (prompt_len + s1), "attention": per_key * (prompt_len ** 2 + s2)}


# --- chapter 05: arithmetic intensity ---


def n_params(config) -> int:
    """Parameters of a GPT-2-architecture model (`kvlab.TinyGPT`) of this shape, the tied LM head counted once.

    Per layer: two LayerNorms (2 · 2d), the qkv projection (d · (d + 2·kv_dim) weights and d + 2·kv_dim biases),
    the attention output (d² + d) and the MLP (d · 4d + 4d, then 4d · d + d). Once: the token and position
    embeddings (vocab_size · d + max_seq_len · d) and the final LayerNorm (2d). With GPT-2 small's shape this is
    124,439,808, the size of the released weights. (Llama-style models have other layers: use their published count.)
    """
    n_layer, n_head, n_kv_head, d, vocab = _checked_shape(config)
    (max_seq_len,) = _shape(config, ("max_seq_len",))
    kv_dim = n_kv_head * (d // n_head)
    per_layer = (2 * 2 * d  # ln_1, ln_2: weight and bias
                 + d * (d + 2 * kv_dim) + (d + 2 * kv_dim)  # qkv
                 + d * d + d  # attention output projection
                 + d * 4 * d + 4 * d + 4 * d * d + d)  # MLP
    return vocab * d + max_seq_len * d + n_layer * per_layer + 2 * d


def bytes_moved(config, n_new: int, n_past: int = 0, bytes_per_elem: float = 2, batch_size: int = 1) -> int:
    """The fewest bytes one forward must move between memory and the compute units.

    One forward of `n_new` tokens per row, for `batch_size` rows that each have `n_past` tokens cached:

        weights    weight_count(config) · bytes_per_elem  read once, shared by every row and every new token
        KV read    kv_cache_bytes(n_layer, batch_size, n_past, ...)    the cached keys and values
        KV write   kv_cache_bytes(n_layer, batch_size, n_new, ...)     the new tokens' keys and values

    Activations are left out: a fused kernel keeps most of them on chip. So this is a lower bound on the traffic,
    and `arithmetic_intensity` an upper bound, which is what a roofline needs: the best case for each phase.
    """
    from .memory import _whole_bytes, kv_cache_bytes  # pure Python too

    check_int("n_new", n_new, 1)
    check_int("n_past", n_past, 0)
    check_int("batch_size", batch_size, 1)
    check_number("bytes_per_elem", bytes_per_elem, 0, inclusive=False)
    n_layer, n_head, n_kv_head, d = _shape(config, ("n_layer", "n_head", "n_kv_head", "d_model"))

    def kv_bytes(tokens: int) -> int:
        return kv_cache_bytes(n_layer, batch_size, tokens, d, bytes_per_elem, n_head=n_head, n_kv_head=n_kv_head)

    return _whole_bytes(weight_count(config), bytes_per_elem) + kv_bytes(n_past) + kv_bytes(n_new)


def weight_count(config) -> int:
    """The parameters a forward reads: a preset's published count, else `n_params` (GPT-2's layout) of the shape.

    A Llama's SwiGLU MLP and untied head are not GPT-2's layout, so the formula is 2.2% short for Llama 2 7B
    (6,592,012,288 against the released 6,738,415,616). The bytes a decode step reads are the real weights, so a
    `ModelPreset` uses its own `n_params`; a bare shape (a GPTConfig) has only the formula.
    """
    published = getattr(config, "n_params", None)
    if published is None:
        return n_params(config)
    check_int("config.n_params", published, 1)
    return published


def arithmetic_intensity(config, n_new: int, n_past: int = 0, bytes_per_elem: float = 2,
                         batch_size: int = 1) -> float:
    """FLOPs per byte moved of one forward: batch_size · forward_flops / bytes_moved.

    Prefill (n_new = P, n_past = 0) does about 2 · n_params FLOPs per token while reading the weights once, so its
    intensity grows like 2P / bytes_per_elem. A decode step (n_new = 1) of one row reads every weight for just one
    token: about 2 / bytes_per_elem FLOP/byte (1 in fp16), whatever the context; B rows share the read, so B times
    more, until the rows' own KV caches, which nobody shares, dominate the bytes.
    """
    check_int("batch_size", batch_size, 1)
    moved = bytes_moved(config, n_new, n_past, bytes_per_elem, batch_size)
    try:
        return batch_size * forward_flops(config, n_new, n_past) / moved
    except OverflowError:  # int / int past float range: only for absurd lengths
        raise ValueError(f"the arithmetic intensity of n_new={n_new}, n_past={n_past} is beyond the float range "
                         f"(about 1.8e308 FLOP/byte)") from None

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

__all__ = ["forward_flops_breakdown", "forward_flops", "generation_flops", "decode_step_flops"]


def _check_count(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def forward_flops_breakdown(config, n_new: int, n_past: int = 0) -> dict[str, int]:
    """FLOPs of one forward of `n_new` tokens over `n_past` cached ones, by kind of matmul (all layers summed)."""
    _check_count("n_new", n_new, 1)
    _check_count("n_past", n_past, 0)
    d, n_layer = config.d_model, config.n_layer
    kv_dim = config.n_kv_head * (d // config.n_head)
    n_keys = n_past + n_new
    return {
        "qkv": n_layer * 2 * n_new * d * (d + 2 * kv_dim),
        "attn_scores": n_layer * 2 * n_new * n_keys * d,
        "attn_values": n_layer * 2 * n_new * n_keys * d,
        "attn_proj": n_layer * 2 * n_new * d * d,
        "mlp": n_layer * 2 * n_new * d * 4 * d * 2,
        "lm_head": 2 * n_new * d * config.vocab_size,
    }


def forward_flops(config, n_new: int, n_past: int = 0) -> int:
    """Total FLOPs of one forward of `n_new` new tokens over `n_past` cached tokens."""
    return sum(forward_flops_breakdown(config, n_new, n_past).values())


def decode_step_flops(config, t: int, use_cache: bool = True) -> int:
    """FLOPs to produce the next token when the sequence holds `t` tokens.

    With a cache only the newest token is fed (n_new = 1 over t - 1 cached): linear in t, through attention only.
    Without one all t tokens are recomputed: the projections and MLP grow like t, attention like t².
    """
    _check_count("t", t, 1)
    return forward_flops(config, 1, t - 1) if use_cache else forward_flops(config, t, 0)


def generation_flops(config, prompt_len: int, n_new: int, use_cache: bool = True) -> int:
    """Total FLOPs to generate `n_new` tokens after a prompt of `prompt_len`, as `kvlab.generate` does it.

    The first token comes from a forward over the prompt (prefill); each later token from one decode step.
    """
    _check_count("prompt_len", prompt_len, 1)
    _check_count("n_new", n_new, 1)
    total = forward_flops(config, prompt_len, 0)  # prefill, the same with or without a cache
    for t in range(prompt_len + 1, prompt_len + n_new):
        total += decode_step_flops(config, t, use_cache)
    return total

"""FastGen: each attention head gets its own eviction policy, chosen by profiling the head on the prompt.

Design note. FastGen (Ge et al. 2024, "Model Tells You What to Discard: Adaptive KV Cache Compression for LLMs",
ICLR) starts from an observation: heads attend in a few recognisable ways. Some look almost only at special tokens,
some at punctuation as well, some at the last few tokens, some at a handful of "frequent" tokens that collect most
of the attention, and a few everywhere. So instead of one eviction rule for every head (`kvlab.compressed_cache`),
it watches each head's attention on the prompt and gives the head the cheapest policy that would have recovered at
least a fraction `threshold` (the paper's T) of that attention. The candidates, in the paper's order, each a
superset of the one before:

    special  ->  special+punct  ->  special+punct+frequent  ->  special+punct+frequent+local  ->  full

After the prompt every head keeps applying its policy to new tokens: a new special or punctuation token is kept,
the local window slides, the frequent tokens are the top scorers of the attention accumulated so far (as in H2O),
and a "full" head keeps everything.

What this implementation chose where the paper leaves room, and why:

- **Recovery** is the share of a head's attention that lands on the tokens its policy keeps, averaged over the
  prompt's queries. Query i sees what the policy would hand it at its decode step: the special and punctuation
  tokens before it, the frequent tokens chosen on the whole prompt, the `window` tokens before it, and itself
  (a decode step always attends to its own token). The head gets the first policy whose recovery is >= threshold.
- **A policy that keeps every prompt token is never chosen**: having dropped nothing, the profile says nothing about
  what it would drop later, and it saves nothing now. So short prompts give full heads, and ``threshold=1`` (every
  bit of attention, which only the full cache can promise for tokens yet to come) gives full heads everywhere.
- **"Special" always includes the text's first token.** The paper's Llama begins every text with the BOS token
  ``<s>``, which is where its heads park unused attention (the attention sink of StreamingLLM). kvlab's texts have
  no BOS, so the first token plays its part; the tokenizer's own special tokens (SmolLM2's ``<|im_start|>`` ...)
  are special too. Punctuation is every token whose text has no letter or digit (for the hello model, whose
  alphabet has no punctuation, that is the space and the newline). `token_sets` derives both from a tokenizer.
- **`window` and `frequent`** are fractions of the prompt (0.3 each, the paper's ratios) or, given as ints, token
  counts; both are fixed at the prompt's profile. The frequent tokens are chosen among those the other parts of the
  policy do not keep already, so a head holds ``|special| + |punct| + frequent + window`` tokens at most.
- **One policy per K/V head**, profiled on the mean attention of the query heads that share it: the K/V head is
  what the cache stores, so that is where memory is saved (the paper's Llama has one query head per K/V head).
- **Heads hold different numbers of tokens**, but the model attends over one (B, H_kv, S, D) tensor. So each layer
  is stored padded to its longest head, and while the cache is attached (``with cache.attach(model):``, needed
  anyway to read the queries) the model's attention gets a mask that hides the padding. `nbytes` counts the tokens
  the heads hold, what a store with one length per head (per-head block tables) would need; `allocated_nbytes`
  counts the padded tensors of this simulation.

Like every eviction cache here, the prompt is attended in full during its own call and cut down afterwards.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import Cache, _check_beam_idx, _check_fits, _check_layer, _check_new_kv
from .checks import check_int, check_number, check_one_of, check_tensor
from .masks import causal_mask

__all__ = ["POLICIES", "TokenSets", "token_sets", "choose_policies", "FastGenCache", "compare_with_fixed_policies",
           "load_recorded_comparison", "SHIPPED_SMOLLM2"]

SHIPPED_SMOLLM2 = Path(__file__).parent / "data" / "smollm2_fastgen.json"  # chapter 09's SmolLM2 comparison

POLICIES = ("special", "special+punct", "special+punct+frequent", "special+punct+frequent+local", "full")
FULL = len(POLICIES) - 1
_SPECIAL, _PUNCT = 1, 2  # bits of a token's mark
# which parts each policy uses: special, punct, frequent, local (full keeps everything)
_USES = torch.tensor([[p in name.split("+") for p in ("special", "punct", "frequent", "local")] for name in POLICIES])


# --- which tokens are special and which are punctuation: the tokenizer says ---


@dataclass(frozen=True)
class TokenSets:
    """Token ids a FastGen policy treats as special and as punctuation."""

    special: frozenset[int]
    punct: frozenset[int]


def _is_punctuation(text: str) -> bool:
    """Punctuation, for a token: some text, none of it a letter or a digit (".", ", ", "\\n", "):" ...)."""
    return bool(text) and not any(ch.isalnum() for ch in text)


def token_sets(tokenizer) -> TokenSets:
    """The special and punctuation ids of a `kvlab.CharTokenizer` or of SmolLM2's tokenizer (`kvlab.smollm2`).

    A character tokenizer has no special tokens; SmolLM2's are its control tokens (``<|im_start|>``,
    ``<|endoftext|>``, ...). Punctuation: every token whose text has no letter or digit (see the module docstring).
    """
    from .tokenizer import CharTokenizer

    if isinstance(tokenizer, CharTokenizer):
        punct = {i for i, ch in enumerate(tokenizer.chars) if _is_punctuation(ch)}
        return TokenSets(frozenset(), frozenset(punct))
    inner = getattr(tokenizer, "tokenizer", None)  # SmolLM2Tokenizer wraps a `tokenizers.Tokenizer`
    if inner is None or not hasattr(inner, "get_added_tokens_decoder"):
        raise TypeError(f"tokenizer must be a kvlab.CharTokenizer or kvlab.smollm2.SmolLM2Tokenizer, "
                        f"got {type(tokenizer).__name__}")
    special = {i for i, token in inner.get_added_tokens_decoder().items() if token.special}
    texts = inner.decode_batch([[i] for i in range(inner.get_vocab_size())], skip_special_tokens=False)
    punct = {i for i, text in enumerate(texts) if i not in special and _is_punctuation(text)}
    return TokenSets(frozenset(special), frozenset(punct))


# --- profiling: which policy recovers a head's attention ---


def _select(policy: torch.Tensor, marks: torch.Tensor, positions: torch.Tensor, scores: torch.Tensor, seen: int,
            window: int, n_frequent: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which slots each head keeps after `seen` tokens: (keep, kept only as part of the local window), (B, H, S).

    `policy` (B, H) indexes POLICIES; `marks`, `positions` (-1: an empty slot) and `scores` (attention received so
    far) are (B, H, S). The frequent tokens are the best scorers among the slots nothing else keeps.
    """
    valid = positions >= 0
    uses = _USES.to(policy.device)[policy][..., None, :]  # (B, H, 1, 4)
    special = valid & (marks & _SPECIAL > 0) & uses[..., 0]
    punct = valid & (marks & _PUNCT > 0) & uses[..., 1]
    local = valid & (positions >= seen - window) & uses[..., 3]
    fixed = special | punct
    candidates = valid & ~fixed & ~local & uses[..., 2]
    frequent = torch.zeros_like(valid)
    k = min(n_frequent, valid.shape[-1])
    if k:
        best = scores.float().masked_fill(~candidates, -math.inf).topk(k, dim=-1)
        frequent.scatter_(-1, best.indices, best.values > -math.inf)
    full = valid & (policy == FULL)[..., None]
    keep = fixed | local | frequent | full
    return keep, local & ~(fixed | frequent | full)


def choose_policies(attention: torch.Tensor, marks: torch.Tensor, window: int, n_frequent: int,
                    threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Profile heads on a prompt: (policy index into POLICIES (B, H), recovery of every policy (B, H, len(POLICIES))).

    `attention` (B, H, T, T) holds each head's causal attention weights on the prompt (rows sum to 1); `marks`
    (B, T) says which prompt tokens are special (bit 1) and punctuation (bit 2). Each head gets the first policy
    that keeps fewer than T tokens and recovers at least `threshold` of its attention; if none does, "full".
    ``threshold=1`` gives "full" to every head: float rounding can make a row's kept weights sum to 1 when a
    dropped token had a weight of 1e-8.
    """
    check_tensor("attention", attention, dim=4, what="a (B, H, T, T) tensor of attention weights")
    B, H, T, _ = attention.shape
    if check_tensor("marks", marks, dim=2, what="a (B, T) tensor of marks").shape != (B, T):
        raise ValueError(f"marks must be (B, T) = {(B, T)} for attention {tuple(attention.shape)}, "
                         f"got {tuple(marks.shape)}")
    window, n_frequent = check_int("window", window, 0), check_int("n_frequent", n_frequent, 0)
    threshold = _check_threshold(threshold)
    positions = torch.arange(T, device=attention.device).expand(B, H, T)
    marks = marks[:, None, :].expand(B, H, T)
    scores = attention.sum(dim=-2)  # (B, H, T): attention each token received from the whole prompt
    rows = torch.arange(T, device=attention.device)
    band = (rows[:, None] - rows[None, :] <= window) & (rows[:, None] >= rows[None, :])  # (T, T): i - w <= j <= i
    recovery = attention.new_ones(B, H, len(POLICIES), dtype=torch.float32)
    chosen = torch.full((B, H), FULL, dtype=torch.long, device=attention.device)
    for p in reversed(range(FULL)):  # the cheapest last, so it wins
        policy = torch.full((B, H), p, device=attention.device)
        keep, local_only = _select(policy, marks, positions, scores, T, window, n_frequent)
        seen_by = (keep & ~local_only)[..., None, :] | torch.eye(T, dtype=torch.bool, device=attention.device)
        if _USES[p, 3]:
            seen_by = seen_by | band
        recovery[..., p] = (attention.float() * seen_by).sum(dim=-1).mean(dim=-1)
        fits = (recovery[..., p] >= threshold) & (keep.sum(dim=-1) < T) & (threshold < 1)  # 1: only full (rounding)
        chosen = torch.where(fits, p, chosen)
    return chosen, recovery


def _attention_weights(q: torch.Tensor, keys: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
    """softmax(q kᵀ / √D) of the new queries (B, H, T_new, D) over `keys` (B, H_kv, S, D), the new ones last, with
    the causal mask and, if given, `visible` (B, H_kv, S); fp32, (B, H_kv, H / H_kv, T_new, S)."""
    B, H, T_new, D = q.shape
    H_kv, S = keys.shape[1], keys.shape[2]
    k = keys.float().repeat_interleave(H // H_kv, dim=1)  # one key head per query head, as the model pairs them
    allowed = causal_mask(T_new, S, q.device)[None, None]
    if visible is not None:
        allowed = allowed & visible.repeat_interleave(H // H_kv, dim=1)[:, :, None, :]
    scores = (q.float() @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~allowed, -math.inf)
    return scores.softmax(dim=-1).view(B, H_kv, H // H_kv, T_new, S)


def _check_threshold(threshold: object) -> float:
    """The share of attention a policy must recover: 0 < threshold <= 1."""
    threshold = check_number("threshold", threshold)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a number with 0 < threshold <= 1, got {threshold!r}")
    return threshold


def _check_fraction_or_count(name: str, value: object) -> float | int:
    """An int >= 0 (tokens) or a float in [0, 1] (a fraction of the prompt)."""
    if isinstance(value, float):
        return check_number(name, value, 0, 1)
    return check_int(name, value, 0)


def _tokens(amount: float | int, prompt_len: int) -> int:
    return amount if isinstance(amount, int) else round(amount * prompt_len)


class FastGenCache(Cache):
    """FastGen (Ge et al. 2024): a policy per K/V head, chosen on the prompt; see the module docstring.

    ``with cache.attach(model):`` lets the cache read the model's queries (to profile and score tokens) and token
    ids (to find special and punctuation tokens), and masks the padding of heads that hold fewer tokens.
    `threshold` is the share of attention a policy must recover; `policy` gives every head that policy instead
    (no profiling: the one-rule-for-all baseline the paper compares with).

    The profile is taken on a layer's first call, so feed the prompt in one call: ``model(prompt, cache)``,
    `kvlab.generate`, or ``quality.decode_token_by_token(..., prefill=len(prompt))``. A prompt fed one token at a
    time is profiled on its first token, where no policy can drop anything, and every head stays full.
    What the chapter shows: `policies` (the grid of policy names), `held` (tokens per head), `recovery` (per layer,
    the share of attention each policy recovered on the prompt), `nbytes` and `allocated_nbytes`.
    """

    def __init__(self, threshold: float = 0.95, *, special_ids: Iterable[int] = (), punct_ids: Iterable[int] = (),
                 window: float | int = 0.3, frequent: float | int = 0.3, policy: str | None = None) -> None:
        self.threshold = _check_threshold(threshold)
        self.special_ids = frozenset(check_int("special_ids", i, 0) for i in special_ids)
        self.punct_ids = frozenset(check_int("punct_ids", i, 0) for i in punct_ids)
        self.window = _check_fraction_or_count("window", window)
        self.frequent = _check_fraction_or_count("frequent", frequent)
        self.policy = None if policy is None else check_one_of("policy", policy, POLICIES)
        self._hooks: list = []
        self._patched: list = []  # attention modules whose `_attend` this cache masks
        self.reset()

    @classmethod
    def for_tokenizer(cls, tokenizer, threshold: float = 0.95, **kwargs) -> FastGenCache:
        """A FastGenCache whose special and punctuation tokens come from `tokenizer` (`token_sets`)."""
        sets = token_sets(tokenizer)
        return cls(threshold, special_ids=sets.special, punct_ids=sets.punct, **kwargs)

    # -- what the chapter shows --

    def policies_of(self, batch: int = 0) -> list[list[str]]:
        """The policy of each (layer, K/V head) for one batch row (each row is profiled on its own prompt)."""
        return [[POLICIES[p] for p in layer[batch].tolist()] for layer in self.policy_ids]

    @property
    def policies(self) -> list[list[str]]:
        """The (n_layer, n_kv_head) grid of policy names, for batch row 0."""
        return self.policies_of(0)

    def held_of(self, batch: int = 0) -> list[list[int]]:
        """How many tokens each (layer, K/V head) holds, for one batch row."""
        return [(positions[batch] >= 0).sum(dim=-1).tolist() for positions in self.positions]

    @property
    def held(self) -> list[list[int]]:
        """The (n_layer, n_kv_head) grid of tokens held, for batch row 0."""
        return self.held_of(0)

    # -- reading the model: queries, token ids, and the padding mask --

    def attach(self, model) -> FastGenCache:
        """Hook `model` (a TinyGPT or a Llama) so this cache sees its queries and ids: ``with cache.attach(model):``."""
        blocks = getattr(model, "blocks", None)
        if blocks is None or not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks):
            raise TypeError(f"model must be a kvlab.TinyGPT or kvlab.llama.Llama, got {type(model).__name__}")
        if self._hooks:
            raise RuntimeError("this FastGenCache is already attached to a model; detach it first")
        if any("_attend" in vars(b.attn) for b in blocks):
            raise RuntimeError("another FastGenCache is attached to this model; detach it first")
        self._hooks.append(model.register_forward_pre_hook(self._capture_ids, with_kwargs=True))
        for block in blocks:
            self._hooks.append(block.attn.qkv.register_forward_hook(self._capture_queries(block.attn)))
            block.attn._attend = self._masked_attend(block.attn)  # an instance attribute: the class is untouched
            self._patched.append(block.attn)
        return self

    @property
    def attached(self) -> bool:
        return bool(self._hooks)

    def detach(self) -> None:
        """Remove the hooks and the masks; the cache keeps its tokens."""
        for hook in self._hooks:
            hook.remove()
        for attn in self._patched:
            del attn._attend
        self._hooks, self._patched, self._queries, self._masks = [], [], {}, {}

    def __enter__(self) -> FastGenCache:
        if not self._hooks:
            raise RuntimeError("use `with cache.attach(model):`, so the cache knows which model's queries to read")
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def _capture_ids(self, model, args, kwargs) -> None:
        """Before each forward: note the ids it feeds, and where they start, if it feeds this cache."""
        self._masks = {}
        cache = args[1] if len(args) > 1 else kwargs.get("cache")
        idx = args[0] if args else kwargs.get("idx")
        if cache is self and isinstance(idx, torch.Tensor):
            self._ids = (self.get_seq_length(), idx)

    def _capture_queries(self, attn):
        def hook(module, inputs, qkv):  # qkv: (B, T, d_model + 2·kv_dim); Llama rotates q in place afterwards
            B, T, _ = qkv.shape
            q = qkv[..., :attn.split_sizes[0]].view(B, T, attn.n_head, attn.head_dim)
            self._queries[attn.layer_idx] = q.transpose(1, 2)  # (B, H, T, D)
        return hook

    def _masked_attend(self, attn):
        """The model's own attention, with the slots no head holds masked out when a layer is padded."""
        original, layer_idx = type(attn)._attend, attn.layer_idx

        def attend(q, k, v, mask=None):
            visible = self._masks.pop(layer_idx, None)  # (B, H_kv, S), set by `update` when some slot is empty
            if visible is not None and visible.shape[-1] == k.shape[-2]:
                if mask is not None:
                    raise ValueError("FastGen's heads hold different tokens, so padded batches (attention_mask) "
                                     "cannot be served: use a cache that keeps every token")
                group = q.shape[1] // visible.shape[1]
                mask = causal_mask(q.shape[-2], k.shape[-2], q.device) & visible.repeat_interleave(group, 1)[:, :, None]
            return original(q, k, v, mask)
        return attend

    def record_queries(self, q: torch.Tensor, layer_idx: int) -> None:
        """Hand over the queries (B, H, T_new, D) of the next ``update(..., layer_idx)`` (to drive it by hand)."""
        if not check_tensor("q", q, dim=4, what="a (B, H, T_new, D) tensor").is_floating_point():
            raise TypeError(f"q must be a floating-point tensor, got {q.dtype}")
        self._queries[check_int("layer_idx", layer_idx, 0)] = q

    def record_token_ids(self, ids: torch.Tensor) -> None:
        """Hand over the ids (B, T_new) of the tokens the next updates bring, to drive the cache without a model."""
        check_tensor("ids", ids, dim=2, dtypes=(torch.int64, torch.int32), what="a (B, T_new) tensor of token ids")
        self._ids = (self.get_seq_length(), ids)

    # -- the Cache API --

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        layer_idx = _check_layer(layer_idx, len(self.keys) + 1)  # layers arrive in order: 0, 1, ... at first
        first = layer_idx == len(self.keys)
        if first:
            _check_new_kv(key, value)
        else:
            _check_fits(key, value, self.keys[layer_idx].shape, self.keys[layer_idx].dtype)
        q, marks = self._queries.get(layer_idx), self._marks_of(key, layer_idx)  # checked before anything is stored
        if q is None:
            raise RuntimeError("FastGenCache needs the queries: run the model inside `with cache.attach(model):`")
        if q.shape[0] != key.shape[0] or q.shape[2:] != key.shape[2:]:
            raise RuntimeError(f"queries {tuple(q.shape)} do not belong to this update (keys {tuple(key.shape)})")
        del self._queries[layer_idx]
        if first:
            return self._profile(q, key, value, marks)
        return self._step(layer_idx, q, key, value, marks)

    def _marks_of(self, key: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """Special/punctuation bits (B, T_new) of the new tokens; the text's first token is always special."""
        B, _, T_new, _ = key.shape
        start = self.seen[layer_idx] if layer_idx < len(self.seen) else 0
        marks = torch.zeros(B, T_new, dtype=torch.uint8, device=key.device)
        if start == 0:
            marks[:, 0] = _SPECIAL
        if not (self.special_ids or self.punct_ids):
            return marks
        if self._ids is None or self._ids[0] != start or tuple(self._ids[1].shape) != (B, T_new):
            raise RuntimeError("FastGenCache needs the token ids to find special and punctuation tokens: run the "
                               "model inside `with cache.attach(model):` (or call record_token_ids first)")
        ids = self._ids[1].to(key.device)
        for bit, chosen in ((_SPECIAL, self.special_ids), (_PUNCT, self.punct_ids)):
            if chosen:
                marks |= torch.isin(ids, torch.tensor(sorted(chosen), device=key.device)).to(torch.uint8) * bit
        return marks

    def _profile(self, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 marks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A layer's first call, the prompt: choose every head's policy, then keep what the policies keep."""
        B, H_kv, T, _ = key.shape
        if not self.keys:  # the sizes come from the prompt, once for every layer
            self.window_tokens, self.frequent_tokens = _tokens(self.window, T), _tokens(self.frequent, T)
        attention = _attention_weights(q, key, None)  # (B, H_kv, group, T, T)
        policy, recovery = choose_policies(attention.mean(dim=2), marks, self.window_tokens, self.frequent_tokens,
                                           self.threshold)
        if self.policy is not None:
            policy = torch.full_like(policy, POLICIES.index(self.policy))
        positions = torch.arange(T, device=key.device).expand(B, H_kv, T)
        scores = attention.sum(dim=(2, 3))  # (B, H_kv, T): received from every query of the group
        self.policy_ids.append(policy)
        self.recovery.append(recovery)
        for name, value_ in (("keys", key), ("values", value), ("positions", positions),
                             ("marks", marks[:, None].expand(B, H_kv, T)), ("scores", scores)):
            getattr(self, name).append(value_)
        self.seen.append(T)
        self._compact(len(self.keys) - 1)
        return key, value  # the prompt is attended in full during its own call

    def _step(self, layer_idx: int, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              marks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode steps and later chunks: attend to what the heads hold and the new tokens, then evict."""
        B, H_kv, T_new, _ = key.shape
        start = self.seen[layer_idx]
        new_positions = torch.arange(start, start + T_new, device=key.device).expand(B, H_kv, T_new)
        self.keys[layer_idx] = keys = torch.cat([self.keys[layer_idx], key], dim=-2)
        self.values[layer_idx] = values = torch.cat([self.values[layer_idx], value], dim=-2)
        self.positions[layer_idx] = torch.cat([self.positions[layer_idx], new_positions], dim=-1)
        self.marks[layer_idx] = torch.cat([self.marks[layer_idx], marks[:, None].expand(B, H_kv, T_new)], dim=-1)
        held = self.scores[layer_idx]
        self.scores[layer_idx] = torch.cat([held, held.new_zeros(B, H_kv, T_new)], dim=-1)
        self.seen[layer_idx] += T_new
        visible = self.positions[layer_idx] >= 0
        visible = None if bool(visible.all()) else visible
        if visible is not None:
            self._masks[layer_idx] = visible  # the model's attention hides the empty slots (`_masked_attend`)
        if bool(_USES.to(key.device)[self.policy_ids[layer_idx], 2].any()):  # someone keeps frequent tokens
            self.scores[layer_idx] += _attention_weights(q, keys, visible).sum(dim=(2, 3))
        self._compact(layer_idx)
        return keys, values

    def _compact(self, layer_idx: int) -> None:
        """Keep what each head's policy keeps, in text order, padded to the layer's longest head (gather copies)."""
        keep, _ = _select(self.policy_ids[layer_idx], self.marks[layer_idx], self.positions[layer_idx],
                          self.scores[layer_idx], self.seen[layer_idx], self.window_tokens, self.frequent_tokens)
        n_keep = keep.sum(dim=-1, keepdim=True)  # (B, H_kv, 1)
        S = int(n_keep.max())
        big = torch.iinfo(torch.int64).max
        order = torch.where(keep, self.positions[layer_idx], big).argsort(dim=-1)[..., :S]  # kept first, in order
        for name in ("keys", "values", "positions", "marks", "scores"):
            tensors = getattr(self, name)
            t = tensors[layer_idx]
            index = order if t.dim() == 3 else order[..., None].expand(-1, -1, -1, t.shape[-1])
            tensors[layer_idx] = t.gather(2, index)
        slots = torch.arange(S, device=order.device)
        self.positions[layer_idx] = self.positions[layer_idx].masked_fill(slots >= n_keep, -1)  # empty slots

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen, not held: the next token's position, which eviction does not change."""
        return self.seen[layer_idx] if layer_idx < len(self.seen) else 0

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        _check_beam_idx(beam_idx, self.keys[0].shape[0] if self.keys else None)
        for name in ("keys", "values", "positions", "marks", "scores", "policy_ids", "recovery"):
            tensors = getattr(self, name)
            tensors[:] = [t.index_select(0, beam_idx.to(t.device)) for t in tensors]
        super().reorder_cache(beam_idx)

    def reset(self) -> None:
        self.keys: list[torch.Tensor] = []  # per layer: (B, H_kv, S, D), S the most tokens any head holds
        self.values: list[torch.Tensor] = []
        self.positions: list[torch.Tensor] = []  # per layer: (B, H_kv, S) position in the text, -1: empty slot
        self.marks: list[torch.Tensor] = []  # per layer: (B, H_kv, S) bits: 1 special, 2 punctuation
        self.scores: list[torch.Tensor] = []  # per layer: (B, H_kv, S) attention received so far
        self.policy_ids: list[torch.Tensor] = []  # per layer: (B, H_kv) index into POLICIES
        self.recovery: list[torch.Tensor] = []  # per layer: (B, H_kv, len(POLICIES)) share each policy recovered
        self.seen: list[int] = []
        self.window_tokens = self.frequent_tokens = 0
        self._queries: dict[int, torch.Tensor] = {}
        self._masks: dict[int, torch.Tensor] = {}
        self._ids: tuple[int, torch.Tensor] | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the K/V the heads hold (empty padding slots and the bookkeeping are not counted)."""
        return sum(int((p >= 0).sum()) * 2 * k.shape[-1] * k.element_size() for p, k in zip(self.positions, self.keys))

    @property
    def allocated_nbytes(self) -> int:
        """Bytes of the padded K/V tensors this simulation allocates (each layer as wide as its longest head)."""
        return sum(t.nbytes for t in self.keys + self.values)


# --- FastGen against one rule for every head, at the same bytes ---


def compare_with_fixed_policies(model, tokenizer, tokens: torch.Tensor, prompt: int, threshold: float = 0.95,
                                n_sink: int = 4) -> dict:
    """FastGen at `threshold` against a sliding window, sinks and H2O holding as many bytes, as plain JSON values.

    The prompt (`tokens[:, :prompt]`) goes in one call, so FastGen profiles it; every later token is a decode
    step, and quality is measured on those steps against the full cache. The fixed caches get the tokens FastGen's
    heads hold on average (its peak bytes / the bytes of one position), so each row costs the same memory. Chapter
    09 shows SmolLM2's result from a run this function recorded (`tools/record_fastgen.py`); its live hello-model
    cell writes the same comparison out step by step, for three thresholds.
    """
    from .cache import DynamicCache  # noqa: PLC0415 - quality and compressed_cache import the model; load on use
    from .compressed_cache import HeavyHitterCache, SinkCache, SlidingWindowCache  # noqa: PLC0415
    from .quality import compare_logits, decode_token_by_token  # noqa: PLC0415

    check_tensor("tokens", tokens, dim=2, what="a (batch, seq_len) tensor of token ids")
    prompt = check_int("prompt", prompt, 2, tokens.shape[1] - 2)
    full = decode_token_by_token(model, tokens, DynamicCache(), prefill=prompt)
    position_bytes = full.peak_nbytes // tokens.shape[1]  # one position: K and V, every layer and row

    def row(cache) -> dict:
        run = decode_token_by_token(model, tokens, cache, prefill=prompt)
        report = compare_logits(run.logits[:, prompt:], full.logits[:, prompt:], tokens[:, prompt:],
                                run.peak_nbytes, full.peak_nbytes)
        return {"nbytes": report.cache_nbytes, "full_nbytes": report.full_nbytes,
                "top1_agreement": report.top1_agreement, "cross_entropy": report.cross_entropy,
                "full_cross_entropy": report.full_cross_entropy}

    fastgen = FastGenCache.for_tokenizer(tokenizer, threshold)
    rows = {f"FastGen T = {fastgen.threshold}": row(fastgen)}
    budget = round(next(iter(rows.values()))["nbytes"] / position_bytes)
    rows[f"sliding window ({budget})"] = row(SlidingWindowCache(budget))
    rows[f"{n_sink} sinks + window ({budget})"] = row(SinkCache(budget, n_sink=n_sink))
    rows[f"H2O heavy hitters ({budget})"] = row(HeavyHitterCache(budget))
    return {"rows": rows, "budget": budget, "policies": fastgen.policies, "held": fastgen.held,
            "window_tokens": fastgen.window_tokens, "frequent_tokens": fastgen.frequent_tokens}


def load_recorded_comparison(path: str | Path = SHIPPED_SMOLLM2) -> dict:
    """A `compare_with_fixed_policies` result saved as JSON (by default SmolLM2's, which chapter 09 shows)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))

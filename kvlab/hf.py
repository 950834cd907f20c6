"""kvlab and Hugging Face ``transformers``: the same GPT-2, its weights moved one-to-one, nothing downloaded.

`TinyGPT` is GPT-2's architecture, so every one of its tensors has a twin in ``transformers.GPT2LMHeadModel``:

    kvlab (TinyGPT)                 transformers (GPT2LMHeadModel)
    wte, wpe                        transformer.wte, transformer.wpe
    blocks[i].ln_1, .ln_2           transformer.h[i].ln_1, .ln_2
    blocks[i].attn.qkv              transformer.h[i].attn.c_attn      (transposed)
    blocks[i].attn.proj             transformer.h[i].attn.c_proj      (transposed)
    blocks[i].mlp.fc, .mlp.proj     transformer.h[i].mlp.c_fc, .c_proj (transposed)
    ln_f                            transformer.ln_f
    wte (tied LM head)              lm_head (tied to transformer.wte)

The one twist is the layout of the linear layers: ``nn.Linear`` stores its weight as (out, in) and computes
``x @ W.T``, while GPT-2's ``Conv1D`` (kept from OpenAI's TensorFlow code) stores (in, out) and computes ``x @ W``;
so each weight is transposed on the way. `to_transformers` and `from_transformers` do the move, and refuse what
the other side cannot represent (grouped-query attention has no place in GPT-2; GPT-2 options such as
``scale_attn_by_inverse_layer_idx`` have none in TinyGPT) with a ValueError that names it.

``transformers`` is an optional dependency (``pip install -e ".[hf]"``). This is the only kvlab module that imports
it, and ``import kvlab`` never imports this module. The API of ``transformers`` moves between minor versions (5.x
renamed the forward's ``past_key_values`` argument to ``cache``), so the few calls that differ go through
`cache_argument_name`, and `cache_api_table` reads the installed version's classes instead of remembering them.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

try:
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, cache_utils
except ImportError as exc:  # the optional dependency is missing: say how to get it
    raise ImportError(
        'kvlab.hf needs the optional dependency transformers. Install kvlab with its "hf" extra: '
        'pip install -e ".[hf]" in a clone of the course (or pip install "kvlab[hf]").'
    ) from exc

import torch

from .checks import check_int, check_one_of, check_tensor, check_type
from .model import GPTConfig, TinyGPT

__all__ = ["TESTED_MAJOR", "weight_names", "format_weight_map", "to_gpt2_config", "from_gpt2_config",
           "to_transformers", "from_transformers", "cache_argument_name", "forward", "cache_nbytes", "ApiRow",
           "cache_api_table", "format_api_table", "captured_messages"]

TESTED_MAJOR = 5  # the major version of transformers this module is tested with (pyproject: transformers>=5,<6)

_major = int(transformers.__version__.split(".")[0])
if _major != TESTED_MAJOR:
    raise ImportError(f"kvlab.hf is written for transformers {TESTED_MAJOR}.x, found {transformers.__version__}; "
                      f'pip install -e ".[hf]" installs a tested version')

# TinyGPT module -> GPT2LMHeadModel module, per block; the Linear/Conv1D pairs need a transpose.
_BLOCK_NORMS = {"ln_1": "ln_1", "ln_2": "ln_2"}
_BLOCK_LINEARS = {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "mlp.fc": "mlp.c_fc",
                  "mlp.proj": "mlp.c_proj"}
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # both are GELU with the tanh approximation, TinyGPT's activation
_ATTN_IMPLEMENTATIONS = ("eager", "sdpa")


def to_gpt2_config(config: GPTConfig, *, attn_implementation: str = "sdpa", bos_token_id: int | None = None,
                   eos_token_id: int | None = None, pad_token_id: int | None = None) -> GPT2Config:
    """The ``GPT2Config`` of a TinyGPT with these sizes: dropout off, GPT-2's tanh GELU, LayerNorm eps 1e-5, tied head.

    GPT2Config's own defaults for the special tokens are GPT-2's ``<|endoftext|>`` = 50256, which lies outside a
    small vocabulary (transformers then logs a complaint each time such a config is built). Here they default to
    None: no begin, end or padding token, so `generate` runs for exactly ``max_new_tokens`` like `kvlab.generate`;
    pass ids from the vocabulary to have them (e.g. the hello tokenizer's newline as end of sequence).
    """
    check_type("config", config, GPTConfig, "a kvlab.GPTConfig")
    if config.n_kv_head != config.n_head:
        raise ValueError(f"GPT-2 has one K/V head per query head; grouped-query attention (n_kv_head="
                         f"{config.n_kv_head} < n_head={config.n_head}) cannot be converted to GPT2LMHeadModel")
    check_one_of("attn_implementation", attn_implementation, _ATTN_IMPLEMENTATIONS)
    for name, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id),
                        ("pad_token_id", pad_token_id)):
        if value is not None:  # None: no such token
            check_int(name, value, 0, config.vocab_size - 1)
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.max_seq_len, n_embd=config.d_model,
        n_layer=config.n_layer, n_head=config.n_head, activation_function="gelu_new", layer_norm_epsilon=1e-5,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, scale_attn_weights=True, tie_word_embeddings=True,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        attn_implementation=attn_implementation,
    )


def from_gpt2_config(gpt2_config: GPT2Config) -> GPTConfig:
    """The `GPTConfig` of a GPT-2 config, or a ValueError naming the first option TinyGPT cannot represent.

    Dropout probabilities are ignored: they act only in training, and both models are compared in eval mode.
    """
    c = check_type("gpt2_config", gpt2_config, GPT2Config, "a transformers.GPT2Config")
    unsupported = [
        ("scale_attn_by_inverse_layer_idx", c.scale_attn_by_inverse_layer_idx, False,
         "TinyGPT scales every layer's scores by 1/sqrt(head_dim) only"),
        ("reorder_and_upcast_attn", c.reorder_and_upcast_attn, False, "TinyGPT has no upcast attention path"),
        ("scale_attn_weights", c.scale_attn_weights, True, "TinyGPT always scales scores by 1/sqrt(head_dim)"),
        ("add_cross_attention", c.add_cross_attention, False, "TinyGPT is decoder-only, with no cross-attention"),
        ("tie_word_embeddings", c.tie_word_embeddings, True, "TinyGPT's LM head is the token embedding"),
        ("layer_norm_epsilon", c.layer_norm_epsilon, 1e-5, "TinyGPT's LayerNorms use eps=1e-5"),
    ]
    for name, value, allowed, why in unsupported:
        if value != allowed:
            raise ValueError(f"cannot convert a GPT-2 with {name}={value!r} (only {allowed!r}): {why}")
    if c.activation_function not in _TANH_GELUS:
        raise ValueError(f"cannot convert a GPT-2 with activation_function={c.activation_function!r}: TinyGPT uses "
                         f"GELU with the tanh approximation, one of {_TANH_GELUS}")
    if c.n_inner is not None and c.n_inner != 4 * c.n_embd:
        raise ValueError(f"cannot convert a GPT-2 with n_inner={c.n_inner}: TinyGPT's MLP is 4 * n_embd = "
                         f"{4 * c.n_embd} wide")
    return GPTConfig(vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head, d_model=c.n_embd,
                     max_seq_len=c.n_positions)


def weight_names(config: GPTConfig) -> list[tuple[str, str, bool]]:
    """(TinyGPT name, GPT2LMHeadModel name, transposed?) for every tensor of a model with this config.

    The table in this module's docstring, spelled out; the tied LM head is not listed (it is ``wte``).
    """
    check_type("config", config, GPTConfig, "a kvlab.GPTConfig")
    names = [("wte.weight", "transformer.wte.weight", False), ("wpe.weight", "transformer.wpe.weight", False),
             ("ln_f.weight", "transformer.ln_f.weight", False), ("ln_f.bias", "transformer.ln_f.bias", False)]
    for i in range(config.n_layer):
        for mine, theirs in _BLOCK_NORMS.items():
            names += [(f"blocks.{i}.{mine}.{part}", f"transformer.h.{i}.{theirs}.{part}", False)
                      for part in ("weight", "bias")]
        for mine, theirs in _BLOCK_LINEARS.items():  # nn.Linear (out, in) <-> Conv1D (in, out)
            names += [(f"blocks.{i}.{mine}.weight", f"transformer.h.{i}.{theirs}.weight", True),
                      (f"blocks.{i}.{mine}.bias", f"transformer.h.{i}.{theirs}.bias", False)]
    return names


def format_weight_map(model: TinyGPT, hf_model: GPT2LMHeadModel, block: int = 0) -> str:
    """`weight_names` for the embeddings, the final LayerNorm and one block, with each tensor's shape on both sides.

    The map a chapter prints to show the conversion: the same tensors under other names, and the Linear/Conv1D
    weights transposed. One block stands for all, which have the same layout; the tied LM head ends the list.
    """
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    check_type("hf_model", hf_model, GPT2LMHeadModel, "a transformers.GPT2LMHeadModel")
    block = check_int("block", block, 0, model.config.n_layer - 1)
    ours, theirs = model.state_dict(), hf_model.state_dict()

    def line(name: str, shape: str, hf_name: str, transposed: bool) -> str:
        hf_shape = str(tuple(theirs[hf_name].shape))
        return f"{name:25} {shape:9} -> {hf_name:34} {hf_shape:9}" + ("  transposed" if transposed else "")

    lines = [line(name, str(tuple(ours[name].shape)), hf_name, transposed)
             for name, hf_name, transposed in weight_names(model.config)
             if name.startswith(f"blocks.{block}.") or not name.startswith("blocks.")]
    return "\n".join(lines + [line("(tied LM head)", "", "lm_head.weight", False)])


@torch.no_grad()
def to_transformers(model: TinyGPT, *, attn_implementation: str = "sdpa", bos_token_id: int | None = None,
                    eos_token_id: int | None = None, pad_token_id: int | None = None) -> GPT2LMHeadModel:
    """A ``GPT2LMHeadModel`` with `model`'s weights (copied), on its device and in its dtype, in eval mode.

    Built from a ``GPT2Config`` (`to_gpt2_config`), so nothing is downloaded. Grouped-query models raise ValueError.
    """
    check_type("model", model, TinyGPT, "a kvlab.TinyGPT")
    config = to_gpt2_config(model.config, attn_implementation=attn_implementation, bos_token_id=bos_token_id,
                            eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    weight = model.wte.weight
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten: leave the caller's RNG untouched
        hf_model = GPT2LMHeadModel(config).to(device=weight.device, dtype=weight.dtype)
    ours = model.state_dict()
    theirs = {hf_name: ours[name].t() if transpose else ours[name]
              for name, hf_name, transpose in weight_names(model.config)}
    theirs["lm_head.weight"] = ours["wte.weight"]  # tied: the same tensor as transformer.wte.weight
    hf_model.load_state_dict(theirs, strict=True)
    if hf_model.lm_head.weight.data_ptr() != hf_model.transformer.wte.weight.data_ptr():
        raise RuntimeError("transformers did not tie lm_head to transformer.wte; the conversion would be wrong")
    return hf_model.eval()


@torch.no_grad()
def from_transformers(hf_model: GPT2LMHeadModel) -> TinyGPT:
    """A TinyGPT with `hf_model`'s weights (copied), on its device and in its dtype, in eval mode.

    Any GPT-2 of transformers converts, as long as TinyGPT can represent it (see `from_gpt2_config`); otherwise
    a ValueError names the option that stands in the way.
    """
    check_type("hf_model", hf_model, GPT2LMHeadModel, "a transformers.GPT2LMHeadModel")
    config = from_gpt2_config(hf_model.config)
    if not torch.equal(hf_model.lm_head.weight, hf_model.transformer.wte.weight):
        raise ValueError("cannot convert: lm_head.weight differs from transformer.wte.weight, but TinyGPT's LM head "
                         "is its token embedding (tied)")
    weight = hf_model.transformer.wte.weight
    with torch.random.fork_rng(devices=[]):  # as in to_transformers: the init is overwritten
        model = TinyGPT(config).to(device=weight.device, dtype=weight.dtype)
    theirs = hf_model.state_dict()
    ours = {name: theirs[hf_name].t() if transpose else theirs[hf_name]
            for name, hf_name, transpose in weight_names(config)}
    model.load_state_dict(ours, strict=True)
    return model.eval()


def cache_argument_name() -> str:
    """The name under which this version's ``GPT2LMHeadModel.forward`` takes and returns the cache.

    ``past_key_values`` since GPT-2's port; transformers 5.x renamed it ``cache`` (still accepting the old name
    for a while, with a deprecation message). Read from the installed signature, not assumed.
    """
    parameters = inspect.signature(GPT2LMHeadModel.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def forward(hf_model: GPT2LMHeadModel, input_ids: torch.Tensor,
            cache: cache_utils.Cache | None = None) -> tuple[torch.Tensor, cache_utils.Cache]:
    """``hf_model(input_ids, cache)`` with the cache on: (logits (B, T, vocab), the cache, now holding `input_ids` too).

    With ``cache=None`` transformers makes a new ``DynamicCache``. This is the ``model(idx, cache)`` of kvlab;
    only the argument's name depends on the installed version (see `cache_argument_name`).
    """
    check_type("hf_model", hf_model, GPT2LMHeadModel, "a transformers.GPT2LMHeadModel")
    check_type("cache", cache, (cache_utils.Cache, type(None)), "None or a transformers Cache (e.g. DynamicCache); "
               "a kvlab cache or a tuple of (key, value) pairs does not fit transformers 5")
    _check_input_ids(hf_model.config, input_ids, 0 if cache is None else cache.get_seq_length())
    name = cache_argument_name()
    output = hf_model(input_ids, use_cache=True, **{name: cache})
    return output.logits, output[name]


def _check_input_ids(config: GPT2Config, input_ids: torch.Tensor, past: int) -> None:
    """What GPT-2 would answer with an IndexError from its embedding tables (or, on a GPU, a device-side assert):
    a token id outside the vocabulary, or more positions than its `n_positions`. One min/max pass, once per call."""
    check_tensor("input_ids", input_ids, dim=2, dtypes=(torch.int64, torch.int32),
                 what="a (batch, seq_len) tensor of token ids")
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids must hold at least one row and one token, got shape {tuple(input_ids.shape)}")
    if past + input_ids.shape[1] > config.n_positions:
        raise ValueError(f"sequence of {past + input_ids.shape[1]} tokens ({past} cached + {input_ids.shape[1]} new) "
                         f"exceeds the model's n_positions={config.n_positions}")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= config.vocab_size:
        raise ValueError(f"token id {low if low < 0 else high} in input_ids is out of range: ids must be in "
                         f"0..{config.vocab_size - 1}")


def cache_nbytes(cache: cache_utils.Cache) -> int:
    """Bytes of the K/V tensors a transformers cache holds now (kvlab's caches have this as ``.nbytes``).

    A ``StaticCache`` counts its whole pre-allocated buffers, as kvlab's does; layers not yet created count 0.
    """
    check_type("cache", cache, cache_utils.Cache, "a transformers Cache (e.g. DynamicCache)")
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.nbytes
    return total


# --- the map from kvlab's names to transformers', read from the installed version ---


@dataclass(frozen=True)
class ApiRow:
    """One line of the name map: a kvlab concept and the transformers names for it, each with its state.

    `transformers` holds (name, state) pairs, older names first; a state is read from the installed package by
    `cache_api_table`: "present", "removed", "deprecated" (its code announces it), "alias of X" (an old name kept
    for another class), or a signature.
    """

    concept: str
    kvlab: str
    transformers: tuple[tuple[str, str], ...]


def _lookup(path: str):
    """The object at 'Name' or 'Name.attr' in transformers.cache_utils (or the top level), else None."""
    head, *rest = path.split(".")
    obj = getattr(cache_utils, head, None) or getattr(transformers, head, None)
    for attr in rest:
        obj = getattr(obj, attr, None) if obj is not None else None
    return obj


def _state(path: str) -> str:
    """The state of a name in the installed transformers. 'Class(arg)' asks whether Class.__init__ takes `arg`."""
    if path.endswith(")"):
        cls_name, arg = path[:-1].split("(")
        cls = _lookup(cls_name)
        takes = cls is not None and arg in inspect.signature(cls.__init__).parameters
        return "present" if takes else "removed"
    obj = _lookup(path)
    if obj is None:
        return "removed"
    if inspect.isclass(obj) and obj.__name__ != path.split(".")[-1]:
        return f"alias of {obj.__name__}"
    if inspect.isfunction(obj):
        with contextlib.suppress(OSError, TypeError):
            if "is deprecated" in inspect.getsource(obj):
                return "deprecated"
    return "present"


def _signature(path: str) -> str:
    """'update(key_states, value_states, layer_idx, *args, **kwargs)': parameter names only, without self."""
    params = [p for p in inspect.signature(_lookup(path)).parameters.values() if p.name != "self"]
    return f"{path.split('.')[-1]}({', '.join(str(p).split(':')[0].split('=')[0] for p in params)})"


def _layer_tensors_state() -> str:
    """Whether a DynamicCache keeps one layer object per layer with `.keys`/`.values` (transformers 5's layout)."""
    cache = cache_utils.DynamicCache()
    key = torch.zeros(1, 1, 1, 1)
    cache.update(key, key, 0)
    layers = getattr(cache, "layers", None)
    return "present" if layers and hasattr(layers[0], "keys") and hasattr(layers[0], "values") else "removed"


def cache_api_table() -> list[ApiRow]:
    """kvlab's cache names beside transformers', each with its state in the installed transformers.

    Nothing here is remembered from a release note: every state is read from the installed package (is the class
    there, is it another class under an old name, does its code announce a deprecation, which name does the model's
    forward take). A new version of transformers changes this table by itself.
    """
    def row(concept: str, kvlab_name: str, *paths: str) -> ApiRow:
        return ApiRow(concept, kvlab_name, tuple((path, _state(path)) for path in paths))

    forward_takes = cache_argument_name()
    return [
        row("the interface", "`kvlab.Cache`", "Cache"),
        row("grow by concatenation", "`kvlab.DynamicCache`", "DynamicCache", "DynamicLayer"),
        row("allocate once, write in place", "`kvlab.StaticCache`", "StaticCache", "StaticLayer"),
        ApiRow("store the new K/V, return all", "`update(key, value, layer_idx)`",
               ((f"Cache.{_signature('Cache.update')}", _state("Cache.update")),)),
        row("tokens seen so far", "`get_seq_length(layer_idx)`", "Cache.get_seq_length"),
        row("capacity", "`get_max_cache_shape()`", "Cache.get_max_cache_shape", "Cache.get_max_length"),
        row("follow the beams", "`reorder_cache(beam_idx)`", "Cache.reorder_cache"),
        row("forget everything", "`reset()`", "Cache.reset"),
        ApiRow("one layer's tensors", "`cache.keys[i]`, `cache.values[i]`",
               (("cache.layers[i].keys / .values", _layer_tensors_state()),)),
        ApiRow("the forward's cache argument", "`model(idx, cache)`",
               (("past_key_values", "present" if forward_takes == "past_key_values" else "renamed"),
                ("cache", "present" if forward_takes == "cache" else "not yet"))),
        row("tuple era: cache -> tuples", "`legacy.to_legacy_cache`", "DynamicCache.to_legacy_cache"),
        row("tuple era: tuples -> cache", "`legacy.from_legacy_cache`", "DynamicCache.from_legacy_cache",
            "DynamicCache(ddp_cache_data)"),
        row("keep only the last W tokens", "chapter 9", "SlidingWindowCache", "DynamicSlidingWindowLayer",
            "StaticSlidingWindowLayer"),
        row("attention sinks + window", "chapter 9", "SinkCache"),
        row("quantised K/V", "chapter 8", "QuantoQuantizedCache", "HQQQuantizedCache", "QuantizedCache(backend)"),
        row("K/V parked in CPU memory", "(not in kvlab)", "OffloadedCache", "OffloadedStaticCache",
            "DynamicCache(offloading)"),
        row("sliding and full layers mixed", "(not in kvlab)", "HybridCache", "StaticCache(config)"),
    ]


def format_api_table(rows: list[ApiRow]) -> str:
    """The rows as a Markdown table for a notebook; a name's state is written beside it unless it is 'present'."""
    check_type("rows", rows, list, "a list of ApiRow, as cache_api_table() returns")
    for i, row in enumerate(rows):
        check_type(f"rows[{i}]", row, ApiRow, "an ApiRow, as cache_api_table() returns")

    def names(pairs: tuple[tuple[str, str], ...]) -> str:
        return ", ".join(f"`{name}`" + ("" if state == "present" else f" **{state}**") for name, state in pairs)

    lines = ["| concept | kvlab | transformers (installed version) |", "|---|---|---|"]
    lines += [f"| {r.concept} | {r.kvlab} | {names(r.transformers)} |" for r in rows]
    return "\n".join(lines)


def captured_messages(fn: Callable[[], object]) -> tuple[object, list[str]]:
    """Run ``fn()`` and return (its result, every warning and transformers log message it produced).

    The messages are caught, not printed, so a chapter can show *that* transformers complains (and test that
    kvlab's conversion makes it stop) without a wall of red text.
    """
    check_type("fn", fn, Callable, "a callable taking no arguments")
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("transformers")
    handler = _Collect(level=logging.WARNING)
    hf_logging = transformers.utils.logging
    hf_logging.disable_default_handler()
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn()
    finally:
        logger.removeHandler(handler)
        hf_logging.enable_default_handler()
    messages += [str(w.message) for w in caught]
    return result, messages

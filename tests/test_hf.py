"""kvlab.hf (chapter 07): kvlab <-> transformers. Same logits, same tokens, same cache bytes; `import kvlab` stays
light.

Tests that need transformers skip without it (`pip install -e ".[hf]"`; the test extra installs it). Nothing here
reaches the network: the environment is set offline before transformers is imported. Nothing here depends on a minor
version of transformers 5 either (its source text, its log messages, which of its methods were renamed): the
tests check behaviour, and read names from the installed package.
"""

import os
import re
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlab
from kvlab import legacy
from kvlab.memory import kv_cache_bytes
from tests.helpers import random_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")


os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


TOLERANCE = 1e-5  # float32: the two libraries add in different orders


_HIDE_TRANSFORMERS = """
import sys

class HideTransformers:
    '''A meta-path finder that makes transformers look uninstalled, whatever is on disk.'''
    def find_spec(self, name, path=None, target=None):
        if name == "transformers" or name.startswith("transformers."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, HideTransformers())
"""


def _run_hidden(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _HIDE_TRANSFORMERS + code], capture_output=True, text=True,
                          timeout=120)


try:
    import transformers

    from kvlab import hf
except ImportError:  # the "hf" extra is not installed: the tests below skip, the three above still run
    transformers = hf = None


needs_hf = pytest.mark.skipif(hf is None, reason='needs the "hf" extra: pip install -e ".[hf]"')


@pytest.fixture(scope="module")
def hello_hf(hello):
    model, _ = hello
    return hf.to_transformers(model)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _cached_logits_hf(hf_model, idx: torch.Tensor, split: int) -> torch.Tensor:
    """Prefill idx[:, :split], then decode the rest one token at a time through transformers' cache."""
    logits, cache = hf.forward(hf_model, idx[:, :split])
    pieces = [logits]
    for t in range(split, idx.shape[1]):
        logits, cache = hf.forward(hf_model, idx[:, t:t + 1], cache)
        pieces.append(logits)
    return torch.cat(pieces, dim=1)


def _cached_logits_kvlab(model, idx: torch.Tensor, split: int) -> torch.Tensor:
    """The same prefill and decode steps through kvlab's DynamicCache.

    Cached and uncached logits differ by float32 rounding in each library alone (about 1e-5 for the hello model,
    whose logits reach 10), so the cached paths are compared with each other, like with like.
    """
    cache = kvlab.DynamicCache()
    pieces = [model(idx[:, :split], cache)]
    pieces += [model(idx[:, t:t + 1], cache) for t in range(split, idx.shape[1])]
    return torch.cat(pieces, dim=1)


def _exists(path: str) -> bool:
    import operator

    from transformers import cache_utils
    try:
        operator.attrgetter(path)(cache_utils)
        return True
    except AttributeError:
        return False


def test_kvlab_imports_without_transformers_and_never_loads_kvlab_hf():
    result = _run_hidden("import kvlab\n"
                         "print(sorted(m for m in ('transformers', 'kvlab.hf') if m in sys.modules))\n"
                         "model, tokenizer = kvlab.load_hello_model()\n"
                         "print(tokenizer.decode(kvlab.generate(model, tokenizer.encode_batch('h'), 4)[0]))\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "hello"]


def test_kvlab_hf_without_transformers_says_how_to_install_the_extra():
    result = _run_hidden("try:\n    import kvlab.hf\nexcept ImportError as e:\n    print('ImportError:', e)\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ImportError:")
    assert 'pip install -e ".[hf]"' in result.stdout and "kvlab[hf]" in result.stdout


def test_kvlab_hf_refuses_an_untested_major_version():
    fake = ("import sys, types\n"
            "fake = types.ModuleType('transformers')\n"
            "fake.__version__ = '4.57.1'\n"
            "fake.GPT2Config = fake.GPT2LMHeadModel = object\n"
            "fake.cache_utils = types.ModuleType('transformers.cache_utils')\n"
            "sys.modules['transformers'] = fake\n"
            "try:\n    import kvlab.hf\nexcept ImportError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", fake], capture_output=True, text=True, timeout=120)
    assert "written for transformers 5.x, found 4.57.1" in result.stdout, result.stderr
    assert 'pip install -e ".[hf]"' in result.stdout


def test_the_hider_really_hides_transformers():
    """The two tests above prove something only if transformers is hidden even where it is installed."""
    result = _run_hidden("try:\n    import transformers\n    print('visible')\n"
                         "except ImportError:\n    print('hidden')\n")
    assert result.stdout.strip() == "hidden", result.stderr


@needs_hf
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@torch.no_grad()
def test_hello_logits_agree_without_a_cache(hello, implementation):
    model, tokenizer = hello
    idx = tokenizer.encode_batch("hello world\nthe cache stores keys and values")
    hf_model = hf.to_transformers(model, attn_implementation=implementation)
    assert hf_model.config._attn_implementation == implementation
    assert _max_diff(hf_model(idx).logits, model(idx)) <= TOLERANCE


@needs_hf
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@torch.no_grad()
def test_hello_logits_agree_with_a_cache(hello, implementation):
    model, tokenizer = hello
    idx = tokenizer.encode_batch("hello world\nthe cache ")
    hf_model = hf.to_transformers(model, attn_implementation=implementation)
    theirs, ours = _cached_logits_hf(hf_model, idx, split=5), _cached_logits_kvlab(model, idx, split=5)
    assert _max_diff(theirs, ours) <= TOLERANCE


@needs_hf
@torch.no_grad()
def test_eager_and_sdpa_agree(hello):
    model, tokenizer = hello
    idx = tokenizer.encode_batch("prefill reads the whole prompt")
    eager = hf.to_transformers(model, attn_implementation="eager")(idx).logits
    sdpa = hf.to_transformers(model, attn_implementation="sdpa")(idx).logits
    assert _max_diff(eager, sdpa) <= TOLERANCE


@needs_hf
@settings(max_examples=12, deadline=None)
@given(n_layer=st.integers(1, 3), n_head=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([4, 8]),
       vocab_size=st.integers(2, 40), seq_len=st.integers(2, 12), batch=st.integers(1, 2), seed=st.integers(0, 99))
@torch.no_grad()
def test_random_configs_agree_with_and_without_a_cache(n_layer, n_head, head_dim, vocab_size, seq_len, batch, seed):
    model = random_model(seed, n_layer=n_layer, n_head=n_head, d_model=n_head * head_dim, vocab_size=vocab_size,
                         max_seq_len=16)
    hf_model = hf.to_transformers(model, attn_implementation="eager")
    idx = torch.randint(0, vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed))
    reference = model(idx)
    assert _max_diff(hf_model(idx).logits, reference) <= TOLERANCE
    split = max(seq_len // 2, 1)
    assert _max_diff(_cached_logits_hf(hf_model, idx, split), _cached_logits_kvlab(model, idx, split)) <= TOLERANCE
    back = hf.from_transformers(hf_model)
    assert _max_diff(back(idx), reference) == 0.0


@needs_hf
@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_tokens_agree(hello, hello_hf, use_cache):
    model, tokenizer = hello
    prompt = tokenizer.encode_batch("hello world\nthe cache ")
    theirs = hello_hf.generate(prompt, max_new_tokens=40, do_sample=False, use_cache=use_cache)
    assert torch.equal(theirs, kvlab.generate(model, prompt, 40, use_cache=use_cache))


@needs_hf
def test_generate_with_the_newline_as_end_of_sequence_matches_kvlab_eos(hello):
    model, tokenizer = hello
    newline = tokenizer.stoi["\n"]
    hf_model = hf.to_transformers(model, bos_token_id=newline, eos_token_id=newline, pad_token_id=newline)
    prompt = tokenizer.encode_batch("h")
    theirs = hf_model.generate(prompt, max_new_tokens=40, do_sample=False)
    ours = kvlab.generate(model, prompt, 40, eos_id=newline)
    assert torch.equal(theirs, ours)
    assert ours.shape[1] < 41 and int(ours[0, -1]) == newline  # it stopped early, at the newline


@needs_hf
def test_random_gpt2_of_transformers_becomes_a_tinygpt():
    """From transformers' own initialisation (not from kvlab), so from_transformers is tested on its own."""
    torch.manual_seed(0)
    gpt2_config = transformers.GPT2Config(vocab_size=30, n_positions=20, n_embd=24, n_layer=2, n_head=3,
                                          bos_token_id=None, eos_token_id=None, attn_implementation="eager")
    hf_model = transformers.GPT2LMHeadModel(gpt2_config).eval()  # dropout 0.1 in the config: off in eval mode
    model = hf.from_transformers(hf_model)
    assert model.config == kvlab.GPTConfig(vocab_size=30, n_layer=2, n_head=3, d_model=24, max_seq_len=20)
    idx = torch.randint(0, 30, (2, 9))
    with torch.no_grad():
        assert _max_diff(model(idx), hf_model(idx).logits) <= TOLERANCE


@needs_hf
def test_round_trip_is_exact_and_copies(hello):
    model, _ = hello
    hf_model = hf.to_transformers(model)
    back = hf.from_transformers(hf_model)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name
    assert hf_model.transformer.wte.weight.data_ptr() != model.wte.weight.data_ptr()  # a copy, not shared
    assert hf_model.lm_head.weight.data_ptr() == hf_model.transformer.wte.weight.data_ptr()  # tied


@needs_hf
def test_weight_names_cover_every_tensor_once(hello):
    model, _ = hello
    names = hf.weight_names(model.config)
    assert sorted(n for n, _, _ in names) == sorted(model.state_dict())
    hf_names = set(hf.to_transformers(model).state_dict())
    assert {h for _, h, _ in names} == hf_names - {"lm_head.weight"}
    assert [n for n, _, t in names if t] == [f"blocks.{i}.{m}.weight" for i in range(model.config.n_layer)
                                            for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")]


@needs_hf
def test_format_weight_map_shows_one_block_with_both_shapes(hello, hello_hf):
    """Chapter 07's map: embeddings, final LayerNorm, the chosen block and the tied head, one line each, with the
    four Linear/Conv1D weights of the block marked transposed and their shapes swapped."""
    model, _ = hello
    lines = hf.format_weight_map(model, hello_hf, block=2).splitlines()
    assert len(lines) == 4 + 12 + 1  # wte, wpe, ln_f (2); per block 2 LayerNorms (4) and 4 Linears (8); lm_head
    assert not any(line.startswith(("blocks.0.", "blocks.1.", "blocks.3.")) for line in lines)
    transposed = [line.split()[0] for line in lines if line.endswith("transposed")]
    assert transposed == [f"blocks.2.{m}.weight" for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")]
    qkv = next(line for line in lines if line.startswith("blocks.2.attn.qkv.weight"))
    assert "(192, 64) -> transformer.h.2.attn.c_attn.weight (64, 192)" in qkv
    assert lines[-1].startswith("(tied LM head)") and "lm_head.weight" in lines[-1]


@needs_hf
def test_format_weight_map_checks_its_arguments(hello, hello_hf):
    model, _ = hello
    with pytest.raises(ValueError, match="block must be an int in 0..3, got 4"):
        hf.format_weight_map(model, hello_hf, block=4)
    with pytest.raises(TypeError, match="block must be"):
        hf.format_weight_map(model, hello_hf, block=1.0)
    with pytest.raises(TypeError, match="hf_model must be a transformers.GPT2LMHeadModel"):
        hf.format_weight_map(model, model)


@needs_hf
def test_dynamic_cache_shapes_length_and_bytes(hello, hello_hf):
    model, tokenizer = hello
    c = model.config
    prompt = tokenizer.encode_batch("hello world\nthe ")
    with torch.no_grad():
        _, cache = hf.forward(hello_hf, prompt)
        ours = kvlab.DynamicCache()
        model(prompt, ours)
    T = prompt.shape[1]
    assert type(cache).__name__ == "DynamicCache"
    assert cache.get_seq_length() == T == 16
    assert [tuple(layer.keys.shape) for layer in cache.layers] == [(1, c.n_head, T, c.head_dim)] * c.n_layer
    assert hf.cache_nbytes(cache) == ours.nbytes == kv_cache_bytes(c.n_layer, 1, T, c.d_model, 4) == 32_768
    for layer, k, v in zip(cache.layers, ours.keys, ours.values):
        assert _max_diff(layer.keys, k) <= TOLERANCE and _max_diff(layer.values, v) <= TOLERANCE


@needs_hf
@pytest.mark.parametrize("batch, seq_len", [(1, 1), (3, 7)])
def test_cache_bytes_follow_the_formula_for_random_models(batch, seq_len):
    model = random_model(3, n_layer=3, n_head=2, d_model=16)
    with torch.no_grad():
        _, cache = hf.forward(hf.to_transformers(model), torch.randint(0, 37, (batch, seq_len)))
    assert hf.cache_nbytes(cache) == kv_cache_bytes(3, batch, seq_len, 16, 4)


@needs_hf
def test_static_cache_generation_matches_kvlab(hello, hello_hf):
    model, tokenizer = hello
    c = model.config
    prompt = tokenizer.encode_batch("hello world\nthe cache ")
    static = transformers.StaticCache(config=hello_hf.config, max_cache_len=64)
    with torch.no_grad():
        theirs = hello_hf.generate(prompt, max_new_tokens=30, do_sample=False,
                                   **{hf.cache_argument_name(): static})
    ours_cache = kvlab.StaticCache(c, batch_size=1, max_cache_len=64)
    assert torch.equal(theirs, kvlab.generate(model, prompt, 30, cache=ours_cache))
    assert int(static.get_seq_length()) == ours_cache.get_seq_length() == 22 + 30 - 1
    assert static.layers[0].keys.shape[2] == ours_cache.get_max_cache_shape() == 64  # the capacity of the buffers
    assert hf.cache_nbytes(static) == ours_cache.nbytes == kv_cache_bytes(c.n_layer, 1, 64, c.d_model, 4) == 131_072


@needs_hf
def test_tuples_from_transformers_drive_kvlabs_legacy_path(hello, hello_hf):
    """The notebook's bridge: transformers' cached K/V as chapter 3's `past` tuples give transformers' next logits."""
    model, tokenizer = hello
    with torch.no_grad():
        _, cache = hf.forward(hello_hf, tokenizer.encode_batch("hello world\nthe "))
        past = tuple((layer.keys, layer.values) for layer in cache.layers)
        legacy_logits, _ = legacy.legacy_forward(model, tokenizer.encode_batch("c"), past)
        hf_logits, _ = hf.forward(hello_hf, tokenizer.encode_batch("c"), cache)
    assert _max_diff(legacy_logits, hf_logits) <= TOLERANCE


@needs_hf
def test_cache_argument_name_is_what_the_forward_takes():
    import inspect

    name = hf.cache_argument_name()
    assert name in ("cache", "past_key_values")
    assert name in inspect.signature(transformers.GPT2LMHeadModel.forward).parameters


@needs_hf
def test_conversion_and_generation_log_nothing(hello):
    model, tokenizer = hello

    def convert_and_generate():
        hf_model = hf.to_transformers(model)
        with torch.no_grad():
            hf.forward(hf_model, tokenizer.encode_batch("hello"))
        return hf_model.generate(tokenizer.encode_batch("h"), max_new_tokens=5, do_sample=False)

    tokens, messages = hf.captured_messages(convert_and_generate)
    assert messages == []
    assert tokenizer.decode(tokens[0]).startswith("hello")


@needs_hf
def test_captured_messages_catches_transformers_log_messages_and_warnings():
    def complain():
        transformers.utils.logging.get_logger("transformers.models.gpt2").warning("token 50256 is out of range")
        __import__("warnings").warn("plain warning")
        return 7

    assert hf.captured_messages(complain) == (7, ["token 50256 is out of range", "plain warning"])


@needs_hf
def test_gpt2_defaults_are_out_of_a_small_vocabulary():
    """GPT-2's default special tokens (50256) in a 25-token vocabulary: what the chapter's conversion avoids.

    Some 5.x releases log a complaint for each such id, others say nothing; any complaint names the id.
    """
    config, messages = hf.captured_messages(lambda: transformers.GPT2Config(vocab_size=25))
    assert config.bos_token_id == config.eos_token_id == 50256
    assert all("50256" in m for m in messages)


@needs_hf
def test_api_table_states_match_the_installed_package():
    rows = hf.cache_api_table()
    states = {name: state for row in rows for name, state in row.transformers}
    for name in ("Cache", "DynamicCache", "StaticCache", "SinkCache", "HybridCache", "OffloadedCache",
                 "DynamicCache.to_legacy_cache", "DynamicCache.from_legacy_cache", "Cache.get_max_length",
                 "Cache.reorder_cache", "Cache.get_max_cache_shape"):
        assert (states[name] != "removed") == _exists(name), name
    for core in ("Cache", "DynamicCache", "StaticCache", "Cache.get_seq_length", "Cache.reorder_cache"):
        assert states[core] == "present", core
    assert states[hf.cache_argument_name()] == "present"


@needs_hf
def test_api_table_for_transformers_5_removals():
    """What the issue lists as removed in transformers 5: the table must say so while it stays so."""
    states = {name: state for row in hf.cache_api_table() for name, state in row.transformers}
    for name in ("DynamicCache.to_legacy_cache", "SinkCache", "OffloadedCache", "HybridCache"):
        assert states[name] == "removed", name
    assert states["cache.layers[i].keys / .values"] == "present"


@needs_hf
def test_format_api_table_is_markdown_with_one_line_per_row():
    rows = hf.cache_api_table()
    text = hf.format_api_table(rows)
    lines = text.splitlines()
    assert len(lines) == len(rows) + 2 and all(line.startswith("|") and line.endswith("|") for line in lines)
    assert "`SinkCache` **removed**" in text


@needs_hf
def test_grouped_query_attention_cannot_become_gpt2():
    model = random_model(n_head=4, n_kv_head=2)
    with pytest.raises(ValueError, match=r"n_kv_head=2 < n_head=4"):
        hf.to_transformers(model)


@needs_hf
@pytest.mark.parametrize("option, value", [
    ("scale_attn_by_inverse_layer_idx", True), ("reorder_and_upcast_attn", True), ("scale_attn_weights", False),
    ("add_cross_attention", True), ("tie_word_embeddings", False), ("layer_norm_epsilon", 1e-6),
    ("activation_function", "relu"), ("n_inner", 100),
])
def test_from_gpt2_config_names_what_tinygpt_cannot_represent(option, value):
    config = hf.to_gpt2_config(kvlab.GPTConfig(vocab_size=11, n_layer=1, n_head=2, d_model=8, max_seq_len=8))
    assert hf.from_gpt2_config(config) == kvlab.GPTConfig(vocab_size=11, n_layer=1, n_head=2, d_model=8,
                                                         max_seq_len=8)
    setattr(config, option, value)
    with pytest.raises(ValueError, match=option):
        hf.from_gpt2_config(config)


@needs_hf
def test_gelu_pytorch_tanh_is_the_same_activation():
    config = hf.to_gpt2_config(kvlab.GPTConfig(vocab_size=11, n_layer=1, n_head=2, d_model=8, max_seq_len=8))
    config.activation_function = "gelu_pytorch_tanh"
    assert hf.from_gpt2_config(config).d_model == 8


@needs_hf
def test_untied_lm_head_weights_are_refused():
    hf_model = hf.to_transformers(random_model())
    hf_model.lm_head.weight = torch.nn.Parameter(hf_model.lm_head.weight.detach().clone() + 1)
    with pytest.raises(ValueError, match="lm_head"):
        hf.from_transformers(hf_model)


@needs_hf
@pytest.mark.parametrize("name", ["bos_token_id", "eos_token_id", "pad_token_id"])
@pytest.mark.parametrize("bad, error", [(-1, ValueError), (37, ValueError), (50256, ValueError), (1.0, TypeError),
                                        (True, TypeError)])
def test_special_token_ids_must_lie_in_the_vocabulary(name, bad, error):
    with pytest.raises(error, match=rf"{name} must be an int in 0\.\.36"):
        hf.to_transformers(random_model(), **{name: bad})


@needs_hf
def test_bad_arguments_raise_naming_the_value():
    model = random_model()
    with pytest.raises(ValueError, match="attn_implementation"):
        hf.to_transformers(model, attn_implementation="flash")
    with pytest.raises(TypeError, match="^model"):
        hf.to_transformers("gpt2")
    with pytest.raises(TypeError, match="^config"):
        hf.to_gpt2_config({"n_layer": 2})
    with pytest.raises(TypeError, match="^config"):
        hf.weight_names(None)
    with pytest.raises(TypeError, match="^hf_model"):
        hf.from_transformers(model)
    with pytest.raises(TypeError, match="^gpt2_config"):
        hf.from_gpt2_config(model.config)
    hf_model = hf.to_transformers(model)
    with pytest.raises(TypeError, match="^hf_model"):
        hf.forward(model, torch.tensor([[1]]))
    with pytest.raises(TypeError, match=r"^cache.*\(DynamicCache\)$"):  # a kvlab cache
        hf.forward(hf_model, torch.tensor([[1]]), kvlab.DynamicCache())
    with pytest.raises(TypeError, match=r"^cache.*\(tuple\)$"):  # the tuples of transformers 4
        hf.forward(hf_model, torch.tensor([[1]]), ((torch.zeros(1), torch.zeros(1)),))
    with pytest.raises(TypeError, match="^cache"):
        hf.cache_nbytes(kvlab.DynamicCache())
    with pytest.raises(TypeError, match=r"rows\[0\]"):
        hf.format_api_table(["row"])
    with pytest.raises(TypeError, match="^rows"):
        hf.format_api_table(hf.cache_api_table()[0])
    with pytest.raises(TypeError, match="^fn"):
        hf.captured_messages(42)


@needs_hf
@pytest.mark.parametrize(("input_ids", "error", "message"), [
    (torch.tensor([[1, 37]]), ValueError, "token id 37 in input_ids is out of range: ids must be in 0..36"),
    (torch.tensor([[-1, 2]]), ValueError, "token id -1 in input_ids is out of range"),
    (torch.zeros(1, 65, dtype=torch.long), ValueError, "sequence of 65 tokens (0 cached + 65 new) exceeds the "
                                                       "model's n_positions=64"),
    (torch.tensor([1, 2]), ValueError, "input_ids must be a (batch, seq_len) tensor of token ids with 2 dimensions"),
    (torch.tensor([[1.0]]), TypeError, "input_ids must have dtype torch.int64 or torch.int32, got torch.float32"),
    ([[1, 2]], TypeError, "input_ids must be a (batch, seq_len) tensor of token ids, got [[1, 2]] (list)"),
    (torch.zeros(1, 0, dtype=torch.long), ValueError, "input_ids must hold at least one row and one token"),
])
def test_forward_names_ids_outside_the_vocabulary_or_the_positions(input_ids, error, message):
    """transformers answers these with IndexError from its embedding tables (a device-side assert on a GPU)."""
    hf_model = hf.to_transformers(random_model())  # vocab_size 37, max_seq_len 64
    with pytest.raises(error, match=re.escape(message)):
        hf.forward(hf_model, input_ids)


@needs_hf
def test_forward_counts_the_cached_positions_too():
    hf_model = hf.to_transformers(random_model())
    _, cache = hf.forward(hf_model, torch.zeros(1, 64, dtype=torch.long))  # every position used
    with pytest.raises(ValueError, match=re.escape("sequence of 65 tokens (64 cached + 1 new) exceeds")):
        hf.forward(hf_model, torch.zeros(1, 1, dtype=torch.long), cache)
    assert cache.get_seq_length() == 64  # refused before transformers touched the cache


@needs_hf
def test_conversion_keeps_dtype_and_eval_mode():
    model = random_model().to(torch.float64).train()
    hf_model = hf.to_transformers(model)
    assert hf_model.transformer.wte.weight.dtype == torch.float64 and not hf_model.training
    back = hf.from_transformers(hf_model.train())
    assert back.wte.weight.dtype == torch.float64 and not back.training


@needs_hf
def test_conversion_leaves_the_global_random_state_alone():
    """Building the target model draws init weights that are then overwritten; the caller's seed must not move."""
    model = random_model()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    hf.from_transformers(hf.to_transformers(model))
    assert torch.equal(torch.rand(3), expected)


@needs_hf
@torch.no_grad()
def test_a_forgotten_transpose_of_a_square_weight_is_silent_but_wrong(hello):
    """The notebook's warning: c_proj is (64, 64) either way, so only the logits reveal the mistake."""
    model, tokenizer = hello
    broken = hf.to_transformers(model)
    c_proj = broken.transformer.h[0].attn.c_proj.weight
    assert c_proj.shape == (64, 64)
    c_proj.copy_(c_proj.t().clone())  # no exception
    idx = tokenizer.encode_batch("hello world")
    assert _max_diff(broken(idx).logits, model(idx)) > 1.0
    assert tuple(broken.transformer.h[0].mlp.c_fc.weight.shape) == (64, 256)  # exercise 2: Conv1D is (in, out)

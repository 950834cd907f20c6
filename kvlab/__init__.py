"""kvlab: a small, readable GPT and the KV cache that makes its generation fast.

    >>> import kvlab
    >>> model, tokenizer = kvlab.load_hello_model()
    >>> tokenizer.decode(kvlab.generate(model, tokenizer.encode_batch("h"), 4)[0])
    'hello'
"""

from . import cache, flops, memory, notebook
from .cache import Cache, DynamicCache, StaticCache
from .generate import GenerationStats, generate, generate_with_stats
from .hello import load_hello_model
from .model import GPTConfig, TinyGPT
from .tokenizer import CharTokenizer
from .generate import beam_search  # chapter 03
from . import attention_trace  # chapter 02
from . import hardware  # chapter 05
from . import paged_cache, serving  # chapter 09
from . import compressed_cache, quality  # chapter 08

__version__ = "0.1.0"

__all__ = [
    "Cache", "DynamicCache", "StaticCache", "GPTConfig", "TinyGPT", "CharTokenizer", "GenerationStats",
    "generate", "generate_with_stats", "load_hello_model", "cache", "flops", "memory", "notebook", "__version__",
    "beam_search", "attention_trace", "hardware",
    "paged_cache", "serving",  # chapter 09
    "compressed_cache", "quality",  # chapter 08
]

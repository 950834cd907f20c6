"""Figures for the chapters, one module per chapter. Each function draws one idea and returns the matplotlib Figure.

Functions take plain numbers (lists, dicts, dataclasses from kvlab) and an optional ``ax`` to draw into, so a widget
can redraw the same picture and a test can call them without a browser. The numbers are checked before anything is
drawn, by one validator (`kvlab.plots._checks`, built on `kvlab.checks`). matplotlib is imported by this package
only, never by ``import kvlab``. Every figure is re-exported here: chapters call ``plots.plot_x``.

    generation   chapter 01   positions per step, step times, throughput
    attention    chapter 02   attention weights, the scores a cache saves at one step
    cache        chapter 03   bytes copied by a cache against its length
    cost         chapter 04   FLOPs and seconds against length, the cache's saving, dense vs attention FLOPs
    roofline     chapter 05   arithmetic intensity, the roofline, TTFT/TPOT, the batch sweep, FLOPs vs time saved,
                              one step's time against the length
    memory       chapter 06   the cache against the weights, bytes per K/V head, one GPU's memory report
    compression  chapter 09   quality against budget, bytes held per step, memory against quality, FastGen's policies
    serving      chapter 10   the waste of paged and contiguous caches, blocks in use per scheduler step
    real_model   chapter 11   attention on the first token per layer and head, perplexity past the budget
"""

from .attention import plot_attention_weights, plot_cache_step
from .cache import copied_bytes_vs_length
from .compression import plot_bytes_per_step, plot_memory_vs_quality, plot_policy_grid, plot_quality_vs_budget
from .cost import plot_cache_speedup, plot_cost_split, plot_cost_vs_length
from .generation import plot_positions_per_step, plot_step_times, plot_throughput
from .memory import plot_cache_vs_weights, plot_kv_heads, plot_memory_report
from .real_model import plot_first_token_attention, plot_rolling_perplexity
from .roofline import (
                       plot_batch_sweep,
                       plot_cache_savings,
                       plot_intensity,
                       plot_roofline,
                       plot_step_time_vs_length,
                       plot_ttft_tpot,
)
from .serving import plot_blocks_in_use, plot_paging_waste

__all__: list[str] = [
    "plot_positions_per_step", "plot_step_times", "plot_throughput",  # chapter 01
    "plot_attention_weights", "plot_cache_step",  # chapter 02
    "copied_bytes_vs_length",  # chapter 03
    "plot_cost_vs_length", "plot_cache_speedup", "plot_cost_split",  # chapter 04
    "plot_intensity", "plot_roofline", "plot_ttft_tpot", "plot_batch_sweep", "plot_cache_savings",  # chapter 05
    "plot_step_time_vs_length",
    "plot_cache_vs_weights", "plot_kv_heads", "plot_memory_report",  # chapter 06
    "plot_quality_vs_budget", "plot_bytes_per_step", "plot_memory_vs_quality", "plot_policy_grid",  # chapter 09
    "plot_paging_waste", "plot_blocks_in_use",  # chapter 10
    "plot_first_token_attention", "plot_rolling_perplexity",  # chapter 11
]

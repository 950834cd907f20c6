"""kvlab.plots as seen in a browser: text a projector can show, figures that keep their size, no hidden lines."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from kvlab import plots, quality, widgets
from kvlab.plots._style import TEXT_PT

_X = [1, 2, 4, 8]
_CH04_05 = {  # every figure chapters 04 and 05 draw, on small made-up numbers
    "cost_vs_length": lambda: plots.plot_cost_vs_length(
        _X, {"with cache": [1, 2, 3, 4], "without cache": [1, 4, 9, 16]}, {"with cache": [1, 2, 3, 4]},
        {"with cache": [1, 1, 1, 1], "without cache": [1, 2, 4, 8]}, fit_from=2),
    "cache_speedup": lambda: plots.plot_cache_speedup(_X, [1, 2, 3, 4], [1, 1.5, 2, 2.5],
                                                      {"(T+1)/2": [1, 1.5, 2.5, 4.5]}),
    "cost_explorer": lambda: widgets.draw_cost_explorer(768, 12, 16384),
    "intensity": lambda: plots.plot_intensity({"prefill": (_X, [1, 2, 4, 8]), "decode": (_X, [0.5] * 4)}, {"CPU": 3.0}),
    "roofline": lambda: plots.plot_roofline({"CPU": (1e11, 2e10), "GPU": (1e14, 2e12)},
                                            {"decode": ([0.5, 1], [1e9, 2e9])}, {"decode": ["B=1", "B=2"]}),
    "ttft_tpot": lambda: plots.plot_ttft_tpot(_X, [0.01, 0.02, 0.04, 0.08], [0.003] * 4),
    "batch_sweep": lambda: plots.plot_batch_sweep(_X, [100.0, 190.0, 350.0, 600.0], [0.01, 0.011, 0.012, 0.015]),
}
_OTHERS = {
    "positions_per_step": lambda: plots.plot_positions_per_step(4, 5),
    "cache_step": lambda: plots.plot_cache_step(3, 5, list("hello")),
    "memory_report": lambda: widgets.draw_memory_calculator(32, 4096, 32, 32, 16, 4096)[1],
    "bytes_per_step": lambda: plots.plot_bytes_per_step({"full": [1024, 2048, 3072], "window": [1024, 2048, 2048]}),
    "paging_waste": lambda: plots.plot_paging_waste([1, 2, 4], [1, 2, 4], 8, [1, 2, 4]),
    "blocks_in_use": lambda: plots.plot_blocks_in_use({"static": [1, 2, 0], "continuous": [2, 0]}, pool_blocks=3),
}


@pytest.mark.parametrize("name", [*_CH04_05, *_OTHERS])
def test_legend_and_tick_text_is_at_least_10_pt(name):
    fig = {**_CH04_05, **_OTHERS}[name]()
    fig.canvas.draw()  # tick labels exist once drawn
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends
    for legend in legends:
        assert min(text.get_fontsize() for text in legend.get_texts()) >= TEXT_PT >= 10, name
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
        assert ticks and min(t.get_fontsize() for t in ticks) >= 10, (name, ax.get_title())
    plt.close(fig)


def _png_size(fig) -> tuple[int, int]:
    """The pixels a notebook shows: the inline backend saves with bbox_inches="tight"."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return Image.open(buffer).size


@pytest.mark.parametrize("T, tokens", [(5, list("hello")), (10, None), (17, list("hello world\nhello"))])
def test_cache_step_figure_has_one_size_for_every_step(T, tokens):
    sizes = set()
    for t in sorted({0, 1, T // 2, T}):  # the stepper's slider: the figure must not jump as it moves
        fig = plots.plot_cache_step(t, T, tokens)
        sizes.add((tuple(fig.get_size_inches()), _png_size(fig)))
        plt.close(fig)
    assert len(sizes) == 1, sizes


def test_bytes_per_step_shows_lines_that_coincide():
    full, window = [1024, 2048, 3072, 4096], [1024, 2048, 2048, 2048]
    fig = plots.plot_bytes_per_step({"full": full, "window": window, "sink": list(window), "heavy": window})
    ax = fig.axes[0]
    styles = [(line.get_linestyle(), line.get_linewidth()) for line in ax.lines]
    assert len(set(styles)) == 4  # each line its own style and width: one drawn over another still shows
    assert [list(line.get_ydata()) for line in ax.lines[1:]] == [[1.0, 2.0, 2.0, 2.0]] * 3  # data not moved
    (note,) = ax.texts
    assert note.get_text().splitlines()[:4] == ["3 lines coincide:", "window", "sink", "heavy"]
    fig = plots.plot_bytes_per_step({"full": full, "window": window})
    assert not fig.axes[0].texts  # nothing to say when no lines coincide
    plt.close("all")


def test_memory_vs_quality_gives_each_family_its_own_marker():
    report = quality.QualityReport(10, 0.9, 1.0, 0.5, 0.3, 500, 1000)
    fig = plots.plot_memory_vs_quality({name: [("", report)] for name in ("a", "b", "c", "d")})
    assert len({line.get_marker() for line in fig.axes[0].lines[:4]}) == 4  # same point, four visible markers
    plt.close(fig)

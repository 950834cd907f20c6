"""kvlab.plots.real_model: chapter 11's figures draw what they are given and refuse what they cannot draw."""

from __future__ import annotations

import pytest
import torch

from kvlab import plots


def test_first_token_attention_heatmap_has_a_row_per_layer_and_a_column_per_head():
    fig = plots.plot_first_token_attention(torch.tensor([[0.1, 0.9, 0.5], [0.0, 1.0, 0.2]]))
    image = fig.axes[0].images[0]
    assert image.get_array().shape == (2, 3)
    assert fig.axes[0].get_xlabel() == "query head" and fig.axes[0].get_ylabel() == "layer"


@pytest.mark.parametrize("bad", [[[0.5, 1.5]], [[0.5], [0.2, 0.1]], []])
def test_first_token_attention_heatmap_refuses_what_is_not_a_table_of_shares(bad):
    with pytest.raises(ValueError):
        plots.plot_first_token_attention(bad)


def test_rolling_perplexity_draws_one_line_per_policy_from_the_first_full_window():
    curves = {"full": torch.linspace(30, 10, 100), "window": torch.linspace(30, 20, 100)}
    fig = plots.plot_rolling_perplexity(curves, budget=40, width=16)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_label() in curves]
    assert len(lines) == 2 and list(lines[0].get_xdata())[0] == 16 and len(lines[0].get_xdata()) == 85
    assert ax.get_yscale() == "log"


def test_rolling_perplexity_refuses_curves_of_different_lengths_and_a_window_longer_than_the_text():
    with pytest.raises(ValueError, match="one value per x value"):
        plots.plot_rolling_perplexity({"a": [1.0, 2.0], "b": [1.0]}, budget=1, width=1)
    with pytest.raises(ValueError, match="width"):
        plots.plot_rolling_perplexity({"a": [1.0, 2.0]}, budget=1, width=3)

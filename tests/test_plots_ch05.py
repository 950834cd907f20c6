"""kvlab.plots.plot_cache_savings (chapter 05, section 10): FLOPs saved against time saved, one colour per machine,
one line style per model."""

import pytest

from kvlab import plots

T = [1, 2, 4]
FLOPS = {"big": (T, [1.0, 1.5, 2.5]), "small": (T, [1.0, 1.5, 2.4])}
TIME = {("GPU A", "big"): (T, [1.0, 1.0, 1.0]), ("GPU A", "small"): (T, [1.0, 1.0, 1.1]),
        ("GPU B", "big"): (T, [1.0, 1.2, 1.9])}


def test_machines_get_colours_models_get_styles_and_the_legend_is_readable():
    ax = plots.plot_cache_savings(FLOPS, TIME, {"CPU, measured": (T, [1.0, 1.3, 1.8])}).axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert lines["FLOPs saved, big"].get_linestyle() == "-" and lines["FLOPs saved, small"].get_linestyle() == "--"
    by_data = {tuple(line.get_ydata()): line for line in ax.lines}
    a_big, a_small, b_big = (by_data[tuple(TIME[key][1])] for key in TIME)
    assert a_big.get_color() == a_small.get_color() != b_big.get_color()  # one colour per machine
    assert a_small.get_linestyle() == "--" and b_big.get_linestyle() == "-"  # the model's style, as for its FLOPs
    assert lines["CPU, measured"].get_marker() == "o" and lines["CPU, measured"].get_linestyle() == "None"
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()].count("time saved on GPU A") == 1  # one entry per machine
    assert min(t.get_fontsize() for t in legend.get_texts()) >= 10
    assert "big (line style)" not in [t.get_text() for t in legend.get_texts()]  # its FLOP line is its key


def test_a_model_without_a_flop_line_gets_a_line_style_key():
    """The CPU's own model has a time line only: the legend still says which model its line style means."""
    ax = plots.plot_cache_savings(FLOPS, {**TIME, ("CPU", "tiny"): (T, [1.0, 1.1, 1.2])}).axes[0]
    key = [line for line in ax.lines if line.get_label() == "tiny (line style)"]
    assert len(key) == 1 and key[0].get_linestyle() == ":" and len(key[0].get_xdata()) == 0
    cpu = next(line for line in ax.lines if list(line.get_ydata()) == [1.0, 1.1, 1.2])
    assert cpu.get_linestyle() == ":"
    assert "tiny (line style)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


@pytest.mark.parametrize("call, error, message", [
    (lambda: plots.plot_cache_savings({}, TIME), ValueError, "flops_saved"),
    (lambda: plots.plot_cache_savings(FLOPS, {"GPU A": (T, [1, 1, 1])}), TypeError, "machine, model"),
    (lambda: plots.plot_cache_savings(FLOPS, {("GPU", "big"): (T, [1, 0, 1])}), ValueError, r"time_saved"),
    (lambda: plots.plot_cache_savings(FLOPS, TIME, {"m": (T, [1, 1])}), ValueError, "measured"),
])
def test_plot_cache_savings_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_plot_step_time_vs_length_draws_milliseconds_and_pairs_colours():
    """Measured series as markers, estimates dashed in the colour of the measured series at the same place."""
    measured = {"cached": (T, [0.010, 0.010, 0.011]), "uncached": (T, [0.010, 0.012, 0.020])}
    fig = plots.plot_step_time_vs_length(measured, {"cached, roofline": (T, [0.003] * 3),
                                                    "uncached, roofline": (T, [0.003] * 3)})
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert list(lines["uncached"].get_ydata()) == pytest.approx([10.0, 12.0, 20.0])  # seconds shown as ms
    assert lines["cached"].get_marker() == "o" and lines["cached, roofline"].get_linestyle() == "--"
    assert lines["uncached"].get_color() == lines["uncached, roofline"].get_color() != lines["cached"].get_color()
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert min(t.get_fontsize() for t in ax.get_legend().get_texts()) >= 10


@pytest.mark.parametrize("call, error, message", [
    (lambda: plots.plot_step_time_vs_length({}), ValueError, "measured"),
    (lambda: plots.plot_step_time_vs_length({"a": (T, [1, 2])}), ValueError, "measured"),
    (lambda: plots.plot_step_time_vs_length({"a": (T, [1, 1, 1])}, {"b": (T, [0, 1, 1])}), ValueError, "estimated"),
])
def test_plot_step_time_vs_length_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()

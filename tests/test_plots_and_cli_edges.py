"""Edge inputs an audit found drawing nothing, drawing wrongly or printing a traceback; each now a clear error."""

import numpy as np
import pytest

from kvlab import plots
from kvlab.cli import main


@pytest.mark.parametrize("lengths, measured, message", [
    ([], {"a": []}, "lengths"),
    ([1, 2], {"a": [1.0, float("nan")]}, r"measured\['a'\]\[1\]"),
    ([1, 2], {"a": [1.0, float("inf")]}, r"measured\['a'\]\[1\]"),
    ([0, 2], {"a": [1.0, 2.0]}, r"lengths\[0\]"),
    ([1, 2], {"a": [1.0]}, r"measured\['a'\]"),
])
def test_copied_bytes_plot_rejects_what_a_log_axis_cannot_show(lengths, measured, message):
    with pytest.raises(ValueError, match=message):
        plots.copied_bytes_vs_length(lengths, measured)


def test_batch_sweep_budget_must_be_finite():
    with pytest.raises(ValueError, match="budget_s"):
        plots.plot_batch_sweep([1, 2], [10.0, 18.0], [0.01, 0.011], budget_s=float("inf"))


def test_paging_waste_accepts_numpy_counts_and_rejects_nan():
    ax = plots.plot_paging_waste([1, 2], np.array([1024, 2048]), np.int64(5120)).axes[0]  # numpy numbers count too
    assert list(ax.lines[-1].get_ydata()) == [1.0, 2.0]  # KiB
    assert ax.lines[0].get_ydata()[0] == 5.0  # the contiguous line
    with pytest.raises(ValueError, match=r"paged_bytes\[1\]"):
        plots.plot_paging_waste([1, 2], [1.0, float("nan")], 5)


def test_bytes_per_step_accepts_numpy_ints():
    ax = plots.plot_bytes_per_step({"full": np.array([1024, 2048, 3072])}).axes[0]
    assert list(ax.lines[0].get_xdata()) == [1, 2, 3] and list(ax.lines[0].get_ydata()) == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("call, error, parameter", [
    (lambda: plots.plot_bytes_per_step({"a": [True]}), TypeError, r"bytes_by_label\['a'\]\[0\]"),
    (lambda: plots.plot_cost_vs_length([1, 2], []), TypeError, "flops"),
    (lambda: plots.plot_roofline({"CPU": (1, 1)}, {"p": (1, 2, 3)}), TypeError, r"points\['p'\]"),
    (lambda: plots.plot_step_times({"a": 0.1}), TypeError, r"stats_by_label\['a'\]"),
    (lambda: plots.plot_step_times({}), ValueError, "stats_by_label"),
    (lambda: plots.plot_intensity({}), ValueError, "series"),  # an empty figure is refused, not drawn
    (lambda: plots.plot_cost_split([1], {"m": {"dense": [1]}}, [1], {}), ValueError, "total"),
    (lambda: plots.plot_quality_vs_budget([8.5], {"a": [None]}), TypeError, r"budgets\[0\]"),  # token counts
])
def test_the_shared_validator_names_where_the_bad_value_sits(call, error, parameter):
    with pytest.raises(error, match=parameter):
        call()


@pytest.mark.parametrize("argv, message", [
    (["memory", "--preset", "llama2-7b", "--seq-len", "4096", "--gpu-gib", "1e-10"], "gpu_gib must be at least one"),
    (["memory", "--preset", "llama2-7b", "--seq-len", "9" * 320], "kvlab: error:"),
])
def test_memory_command_prints_one_error_line_not_a_traceback(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1

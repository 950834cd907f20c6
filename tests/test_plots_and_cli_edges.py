"""Edge inputs an audit found drawing nothing, drawing wrongly or printing a traceback; each now a clear error."""

import numpy as np
import pytest

from kvlab import plots
from kvlab.cli import main


@pytest.mark.parametrize("lengths, measured, message", [
    ([], {"a": []}, "lengths must hold at least one length"),
    ([1, 2], {"a": [1.0, float("nan")]}, "finite, positive lengths and byte counts; 'a' has one that is not"),
    ([1, 2], {"a": [1.0, float("inf")]}, "finite, positive lengths and byte counts"),
])
def test_copied_bytes_plot_rejects_what_a_log_axis_cannot_show(lengths, measured, message):
    with pytest.raises(ValueError, match=message):
        plots.copied_bytes_vs_length(lengths, measured)


def test_batch_sweep_budget_must_be_finite():
    with pytest.raises(ValueError, match="budget_s"):
        plots.plot_batch_sweep([1, 2], [10.0, 18.0], [0.01, 0.011], budget_s=float("inf"))


def test_paging_waste_accepts_numpy_counts_and_rejects_nan():
    fig = plots.plot_paging_waste([1, 2], np.array([1, 1]), np.int64(5))  # numpy numbers are byte counts too
    assert fig.axes
    with pytest.raises(ValueError, match="paged_bytes"):
        plots.plot_paging_waste([1, 2], [1.0, float("nan")], 5)


def test_bytes_per_step_accepts_numpy_ints():
    fig = plots.plot_bytes_per_step({"full": np.array([1024, 2048, 3072])})
    assert fig.axes


@pytest.mark.parametrize("argv, message", [
    (["memory", "--preset", "llama2-7b", "--seq-len", "4096", "--gpu-gib", "1e-10"], "gpu_gib must be at least one"),
    (["memory", "--preset", "llama2-7b", "--seq-len", "9" * 320], "kvlab: error:"),
])
def test_memory_command_prints_one_error_line_not_a_traceback(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1

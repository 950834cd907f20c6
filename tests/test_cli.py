"""The kvlab command: right numbers, and one-line errors with exit status 2."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest

from kvlab import memory, widgets
from kvlab.cli import main


def _cli(argv) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue().strip()


def test_memory_gives_the_seed_example(capsys):
    assert main(["memory", "--preset", "gpt3-175b", "--batch", "16", "--seq-len", "1024", "--dtype", "fp16"]) == 0
    out = capsys.readouterr().out
    assert "77,309,411,328 bytes = 72.0 GiB (77.3 GB)" in out


def test_memory_custom_gqa_model(capsys):
    assert main(["memory", "--n-layer", "80", "--hidden", "8192", "--n-head", "64", "--n-kv-head", "8",
                 "--seq-len", "1"]) == 0
    assert "327,680 bytes" in capsys.readouterr().out


@pytest.mark.parametrize("cache_flag", [[], ["--no-cache"]])
def test_generate_says_hello(capsys, cache_flag):
    assert main(["generate", "--prompt", "h"] + cache_flag) == 0
    assert capsys.readouterr().out.splitlines()[0] == "hello"


def test_info(capsys):
    assert main(["info"]) == 0
    assert "torch" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["memory", "--preset", "gpt5", "--seq-len", "3"], "preset must be one of"),
    (["memory", "--preset", "gpt2-small", "--seq-len", "-3"], "argument --seq-len: must be an int from 0 to "),
    (["memory", "--preset", "gpt2-small", "--seq-len", "3", "--dtype", "fp8"], "invalid choice: 'fp8'"),
    (["memory", "--seq-len", "3"], "give --preset, or both --n-layer and --hidden"),
    (["memory", "--n-layer", "2", "--hidden", "64", "--n-kv-head", "2", "--seq-len", "3"], "needs --n-head"),
    (["generate", "--prompt", "Hi"], "characters 'H' are not in the vocabulary"),
    (["generate", "--max-new-tokens", "0"], "argument --max-new-tokens: must be an int from 1 to "),
    (["bogus"], "invalid choice: 'bogus'"),
    ([], "required"),
])
def test_bad_arguments_print_one_line_and_exit_2(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_console_script_exit_status():
    result = subprocess.run([sys.executable, "-m", "kvlab.cli", "memory", "--seq-len", "x"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "invalid int value: 'x'" in result.stderr and "Traceback" not in result.stderr


# --- chapter 06: kv cache memory -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset_id", "batch", "seq_len", "dtype", "gpu_gib"),
    [("gpt3-175b", 16, 1024, "fp16", 80), ("llama2-7b", 16, 4096, "fp16", 24), ("llama2-70b", 8, 4096, "int8", 141),
     ("mistral-7b", 1, 32768, "bf16", 16), ("gpt2-small", 64, 1024, "fp32", 40), ("llama3-8b", 3, 7, "int4", 24)],
)
def test_cli_function_and_widget_agree(preset_id, batch, seq_len, dtype, gpu_gib):
    p = memory.get_preset(preset_id)
    report = memory.preset_report(p, batch, seq_len, dtype, gpu_gib=gpu_gib)
    bytes_text = f"KV cache: {memory.bytes_line(report.cache_bytes)}"
    assert bytes_text == f"KV cache: {p.kv_cache_bytes(batch, seq_len, memory.bytes_per_element(dtype)):,} bytes = " \
                         f"{memory.format_bytes(p.kv_cache_bytes(batch, seq_len, memory.bytes_per_element(dtype)))}"
    args = ["memory", "--preset", preset_id, "--batch", str(batch), "--seq-len", str(seq_len), "--dtype", dtype]
    plain = _cli(args)
    on_gpu = _cli(args + ["--gpu-gib", str(gpu_gib)])
    widget_text, _ = widgets.draw_memory_calculator(p.n_layer, p.d_model, p.n_head, p.n_kv_head, batch, seq_len,
                                                    dtype, gpu_gib, p.n_params / 1e9)
    assert bytes_text in plain.splitlines() and bytes_text in widget_text.splitlines()
    assert on_gpu == widget_text == memory.format_report(report)
    assert on_gpu.splitlines()[:3] == plain.splitlines()  # --gpu-gib only adds lines


def test_cli_custom_model_with_params_equals_the_widget():
    out = _cli(["memory", "--n-layer", "80", "--hidden", "8192", "--n-head", "64", "--n-kv-head", "8", "--batch", "2",
                "--seq-len", "100", "--gpu-gib", "40", "--params", "1000000000", "--weight-dtype", "int4"])
    text, _ = widgets.draw_memory_calculator(80, 8192, 64, 8, 2, 100, "fp16", 40, 1.0, weight_dtype="int4")
    assert out == text
    assert "weights: 1,000,000,000 parameters in int4 = 500,000,000 bytes" in out
    assert "KV cache: 65,536,000 bytes" in out  # 2 · 80 · 2 · 100 · 1024 · 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--params", "7"], "--params and --weight-dtype need --gpu-gib"),
        (["--gpu-gib", "0"], "gpu_gib must be a finite number > 0, got 0.0"),
        (["--gpu-gib", "x"], "invalid float value: 'x'"),
        (["--gpu-gib", "80", "--weight-dtype", "fp8"], "invalid choice: 'fp8'"),
    ],
)
def test_cli_gpu_options_bad_input(capsys, extra, message):
    assert main(["memory", "--preset", "llama2-7b", "--seq-len", "3"] + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_custom_model_needs_params(capsys):
    assert main(["memory", "--n-layer", "2", "--hidden", "64", "--seq-len", "3", "--gpu-gib", "16"]) == 2
    assert "a custom model needs --params" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["memory", "--preset", "llama2-7b", "--seq-len", "4096", "--gpu-gib", "1e-10"], "gpu_gib must be at least one"),
])
def test_memory_command_prints_one_error_line_not_a_traceback(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


_COUNT_OPTIONS = [  # (command line without the option, option, smallest allowed)
    (["memory", "--preset", "gpt2-small", "--seq-len", "8"], "--n-layer", 1),
    (["memory", "--preset", "gpt2-small", "--seq-len", "8"], "--hidden", 1),
    (["memory", "--preset", "gpt2-small", "--seq-len", "8", "--n-kv-head", "1"], "--n-head", 1),
    (["memory", "--preset", "gpt2-small", "--seq-len", "8", "--n-head", "12"], "--n-kv-head", 1),
    (["memory", "--preset", "gpt2-small", "--seq-len", "8"], "--batch", 0),
    (["memory", "--preset", "gpt2-small"], "--seq-len", 0),
    (["memory", "--preset", "gpt2-small", "--seq-len", "8", "--gpu-gib", "80"], "--params", 0),
    (["generate", "--prompt", "h"], "--max-new-tokens", 1),
    (["bench", "--out", "never-written.json"], "--threads", 1),
]


@pytest.mark.parametrize("argv, option, minimum", _COUNT_OPTIONS)
@pytest.mark.parametrize("value, shown", [("9" * 400, "got a 400-digit number"), ("-3", "got -3"),
                                          ("10000000000000001", "got 10,000,000,000,000,001"), ("x", None)])
def test_every_count_option_names_itself_and_its_range(capsys, monkeypatch, tmp_path, argv, option, minimum, value,
                                                       shown):
    """Huge, negative and non-numeric counts: one argparse line naming the option, exit 2, before any work."""
    monkeypatch.chdir(tmp_path)
    assert main([*argv, option, value]) == 2
    err = capsys.readouterr().err
    expected = f"argument {option}: invalid int value: 'x'" if value == "x" else \
        f"argument {option}: must be an int from {minimum} to "
    assert expected in err and (shown is None or shown in err), err
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, option, minimum", [case for case in _COUNT_OPTIONS if case[2] == 1])
def test_zero_is_refused_where_a_count_starts_at_one(capsys, argv, option, minimum):
    assert main([*argv, option, "0"]) == 2
    assert f"argument {option}: must be an int from 1 to " in capsys.readouterr().err


def test_zero_tokens_or_rows_is_an_empty_cache(capsys):
    assert main(["memory", "--preset", "gpt2-small", "--seq-len", "0"]) == 0
    assert "KV cache: 0 bytes" in capsys.readouterr().out

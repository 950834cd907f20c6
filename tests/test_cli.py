"""The kvlab command: right numbers, and one-line errors with exit status 2."""

import subprocess
import sys

import pytest

from kvlab.cli import main


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
    (["memory", "--preset", "gpt2-small", "--seq-len", "-3"], "seq_len must be an int >= 0, got -3"),
    (["memory", "--preset", "gpt2-small", "--seq-len", "3", "--dtype", "fp8"], "invalid choice: 'fp8'"),
    (["memory", "--seq-len", "3"], "give --preset, or both --n-layer and --hidden"),
    (["memory", "--n-layer", "2", "--hidden", "64", "--n-kv-head", "2", "--seq-len", "3"], "needs --n-head"),
    (["generate", "--prompt", "Hi"], "characters 'H' are not in the vocabulary"),
    (["generate", "--max-new-tokens", "0"], "max_new_tokens must be an int >= 1, got 0"),
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

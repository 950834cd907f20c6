"""`python -m kvlab.train_hello`: a new file in the current folder, never the shipped weights without a flag.

The shipped paths are pointed at copies in tmp_path, so that even the old code (which wrote the shipped file by
default) cannot replace the real weights while these tests show that it would; the real files' hashes are checked
too.
"""

import hashlib
import shutil

import pytest

from kvlab import hello, train_hello
from kvlab.hello import load_model

REAL_SHIPPED = (hello.HELLO_WEIGHTS, hello.HELLO_KV_HEAD_WEIGHTS)  # read before any test points them elsewhere


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """Copies of the shipped weights that `train_hello` sees as the shipped files; the current folder is work/."""
    folder = tmp_path / "site-packages" / "kvlab" / "data"
    folder.mkdir(parents=True)
    copies = {}
    for name, real in (("HELLO_WEIGHTS", hello.HELLO_WEIGHTS), ("HELLO_KV_HEAD_WEIGHTS", hello.HELLO_KV_HEAD_WEIGHTS)):
        copies[name] = folder / real.name
        shutil.copyfile(real, copies[name])
        monkeypatch.setattr(hello, name, copies[name])
        monkeypatch.setattr(train_hello, name, copies[name], raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return copies


def test_default_run_writes_hello_model_pt_here_and_leaves_the_shipped_weights(shipped, tmp_path, capsys):
    real_before = [_digest(path) for path in REAL_SHIPPED]
    copy_before = _digest(shipped["HELLO_WEIGHTS"])
    train_hello.main(["--steps", "2"])
    assert _digest(shipped["HELLO_WEIGHTS"]) == copy_before
    assert [_digest(path) for path in REAL_SHIPPED] == real_before
    out = tmp_path / "work" / "hello_model.pt"
    model, tokenizer = load_model(out)  # a learner loads their own training run
    assert model.config.n_layer == hello.HELLO_CONFIG["n_layer"] and tokenizer.vocab_size == model.config.vocab_size
    assert f"load it with kvlab.hello.load_model({str(out)!r})" in capsys.readouterr().out


def test_an_existing_file_is_kept_unless_force(shipped, tmp_path, capsys):
    mine = tmp_path / "work" / "hello_model.pt"
    mine.write_bytes(b"my model")
    with pytest.raises(SystemExit) as exit_info:
        train_hello.main(["--steps", "1"])
    assert exit_info.value.code == 2 and mine.read_bytes() == b"my model"
    assert "already exists" in capsys.readouterr().err
    train_hello.main(["--steps", "1", "--force"])
    assert load_model(mine)[0].config.n_head == hello.HELLO_CONFIG["n_head"]


def test_kv_heads_default_run_leaves_the_shipped_file(shipped, tmp_path):
    before = _digest(shipped["HELLO_KV_HEAD_WEIGHTS"])
    train_hello.main(["--kv-heads", "--steps", "1"])
    assert _digest(shipped["HELLO_KV_HEAD_WEIGHTS"]) == before
    assert (tmp_path / "work" / "hello_kv_heads.pt").exists()


def test_replace_shipped_is_the_explicit_way_to_replace_the_package_weights(shipped):
    before = _digest(shipped["HELLO_WEIGHTS"])
    train_hello.main(["--steps", "1", "--replace-shipped"])
    assert _digest(shipped["HELLO_WEIGHTS"]) != before


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be an int"),
    (["--steps", "-3"], "got -3"),
    (["--steps", "9" * 400], "--steps must be an int"),
    (["--steps", "x"], "invalid int value: 'x'"),
    (["--replace-shipped", "--out", "x.pt"], "drop --out"),
    (["--out", "/proc/x.pt"], "cannot write in '/proc'"),
    (["--out", "missing/x.pt"], "does not exist"),
])
def test_bad_arguments_exit_2_before_training_and_write_nothing(shipped, tmp_path, capsys, argv, message):
    before = _digest(shipped["HELLO_WEIGHTS"])
    with pytest.raises(SystemExit) as exit_info:
        train_hello.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert list((tmp_path / "work").iterdir()) == [] and _digest(shipped["HELLO_WEIGHTS"]) == before


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 0}, "steps must be an int"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": 0.0}, "lr"),
])
def test_train_hello_model_refuses_settings_that_train_nothing(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_hello.train_hello_model(log_every=0, **kwargs)

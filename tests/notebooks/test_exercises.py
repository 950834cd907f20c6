"""The exercises that check by running code accept the right answers and refuse the near misses.

Each test runs the chapter's own exercise cell (`helpers.run_exercise`) with an answer filled in, in a namespace
holding what the chapter's earlier cells define, and reads what the cell printed. The worked answers themselves are
executed in solutions/ by nbval; these tests add the wrong answers a learner is likely to give.
"""

import pytest
import torch
import transformers

import kvlab
from kvlab import flops, hardware, hf, measure, memory
from tests.helpers import NOTEBOOKS, chapter_config, run_exercise


@pytest.fixture(scope="module")
def hello_namespace(hello):
    model, tokenizer = hello
    return {"kvlab": kvlab, "torch": torch, "model": model, "tokenizer": tokenizer, "config": model.config}


@pytest.mark.parametrize(("guess", "right"), [("decode", True), (" Decode\n", True), ("decoder", False)])
def test_chapter_00_accepts_the_word_the_model_writes(capsys, hello_namespace, guess, right):
    out = run_exercise(NOTEBOOKS / "00_start_here.ipynb", "my_guess = None", f"my_guess = {guess!r}",
                       dict(hello_namespace), capsys)
    assert ("Correct" in out) is right, out


@pytest.mark.parametrize(("count", "right"), [(49 * 16, True), (50 * 16, True), (49, False), (48 * 16, False)])
def test_chapter_02_accepts_49_or_50_keys(capsys, hello_namespace, count, right):
    out = run_exercise(NOTEBOOKS / "02_attention_h_to_hello.ipynb", "my_count = None", f"my_count = {count}",
                       {**hello_namespace, "LAYER": 0, "HEAD": 0}, capsys)
    assert ("Correct" in out) is right, out
    assert ("numbers come from the cache" in out) is right


@pytest.fixture(scope="module")
def chapter_04_namespace():
    model = kvlab.TinyGPT(chapter_config()).eval()
    return {"kvlab": kvlab, "torch": torch, "measure": measure, "model": model}


@pytest.mark.parametrize(("prediction", "close"), [(26, True), (27.71, True), ("(63 + 28) * 36 / 2 / 63", True),
                                                   (32.5, False), (13, False)])
def test_chapter_04_flops_prediction(capsys, chapter_04_namespace, prediction, close):
    out = run_exercise(NOTEBOOKS / "04_cost_with_and_without_cache.ipynb", "my_prediction = None  # a ratio",
                       f"my_prediction = {prediction}", dict(chapter_04_namespace), capsys)
    assert ("within the 10%" in out) is close, out


@pytest.mark.parametrize(("prediction", "close"), [(49 * 256, True), (50 * 256, False), (48 * 256, False)])
def test_chapter_04_bytes_prediction_catches_the_token_never_fed(capsys, chapter_04_namespace, prediction, close):
    out = run_exercise(NOTEBOOKS / "04_cost_with_and_without_cache.ipynb", "my_prediction = None  # bytes",
                       f"my_prediction = {prediction}", dict(chapter_04_namespace), capsys)
    assert ("within the 1%" in out) is close, out


@pytest.fixture(scope="module")
def chapter_07_namespace(hello_namespace):
    hf_model = hf.to_transformers(hello_namespace["model"]).eval()
    long_prompt = hello_namespace["tokenizer"].encode_batch("hello world\nthe cache ")
    return {**hello_namespace, "transformers": transformers, "hf": hf, "hf_model": hf_model,
            "long_prompt": long_prompt, "flops": flops, "hardware": hardware, "memory": memory}


@pytest.mark.parametrize(("answer", "expect"), [
    ((61, 124_928), "Correct: 124928"),
    ((61, 131_072), "Not quite"),  # the right length, the bytes of section 5's 64-slot cache
    ((62, 126_976), "one less fails: False"),  # works, but not the smallest
    ((60, 122_880), "is too short"),
])
def test_chapter_07_static_cache_sizing(capsys, chapter_07_namespace, answer, expect):
    out = run_exercise(NOTEBOOKS / "07_hugging_face_cache_api.ipynb", "my_max_cache_len, my_bytes = None, None",
                       f"my_max_cache_len, my_bytes = {answer}", dict(chapter_07_namespace), capsys)
    assert expect in out, out
    assert ("Correct" in out) is (expect.startswith("Correct"))


@pytest.mark.parametrize(("answer", "right"), [
    (("int8", 49), True),
    (("int8", 61), False),  # the memory limit; the 20 ms step binds first
    (("int4", 99), False),  # meets both, with fewer bits than needed
    (("fp16", 24), False),  # cannot reach 40
])
def test_chapter_07_batch_and_dtype_design(capsys, chapter_07_namespace, answer, right):
    out = run_exercise(NOTEBOOKS / "07_hugging_face_cache_api.ipynb", "my_dtype, my_batch = None, None",
                       f"my_dtype, my_batch = {answer}", dict(chapter_07_namespace), capsys)
    assert ("Correct" in out) is right, out
    if answer == ("int8", 61):
        assert "a step within 20 ms: False" in out

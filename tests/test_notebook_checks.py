"""kvlab.notebook.check_cache and check_prediction: a learner's cache through the contract, a prediction judged.

check_cache must pass kvlab's own caches, and fail, with a message that names the mistake, caches with the bugs
learners make: each planted bug below is one of them, and each test checks the sentence the learner would read.
"""

import pytest
import torch

import kvlab
from kvlab.compressed_cache import SlidingWindowCache
from kvlab.exercises import BrokenCache, SlidingWindowSkeleton
from kvlab.notebook import check_cache, check_prediction

FAST = ("gqa",)  # one attention layout is enough to see a bug; kvlab's own caches run all three


class Window(SlidingWindowSkeleton):
    """A learner's sliding window, written into the skeleton as chapter 03 asks; `bug` plants one mistake at a time."""

    def __init__(self, window, bug=None):
        super().__init__(window)
        self.bug = bug

    def update(self, key, value, layer_idx):
        if layer_idx == len(self.keys):
            self.keys.append(key)
            self.values.append(value)
            if layer_idx == len(self.seen):
                self.seen.append(0)
            self.seen[layer_idx] += key.shape[2]
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key], dim=2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value], dim=2)
            self.seen[layer_idx] += key.shape[2]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.bug == "evicts on decode only" and self.seen[layer_idx] == key.shape[2]:
            return keys, values  # the first call (the prompt) keeps everything, however long
        size = self.window - 1 if self.bug == "keeps one too few" else self.window
        held = slice(None, size) if self.bug == "keeps the oldest" else slice(-size, None)
        self.keys[layer_idx], self.values[layer_idx] = keys[:, :, held], values[:, :, held]
        return keys, values

    def get_seq_length(self, layer_idx=0):
        if layer_idx >= len(self.seen):
            return 0
        return self.keys[layer_idx].shape[2] if self.bug == "counts held tokens" else self.seen[layer_idx]

    def reorder_rows(self, beam_idx):  # TODO 4: the skeleton's reorder_cache calls this
        if self.bug != "ignores reorder":
            self.keys = [k.index_select(0, beam_idx) for k in self.keys]
            self.values = [v.index_select(0, beam_idx) for v in self.values]

    def reset(self):
        self.keys, self.values = [], []
        if self.bug != "keeps the counter":
            self.seen = []

    @property
    def nbytes(self):
        return 0 if self.bug == "no nbytes" else sum(t.nbytes for t in self.keys + self.values)


class OffByOne(kvlab.DynamicCache):
    def get_seq_length(self, layer_idx=0):
        return max(super().get_seq_length(layer_idx) - 1, 0)


class Crashes(kvlab.DynamicCache):
    def update(self, key, value, layer_idx):
        return key / 0 if layer_idx else {}["no such key"]


def checked(capsys, cache, **kwargs) -> tuple[bool, str]:
    result = check_cache(cache, **kwargs)
    return result, capsys.readouterr().out


# --- kvlab's own caches pass ---

@pytest.mark.parametrize(("cache", "kwargs"), [
    (kvlab.DynamicCache, {}),  # every attention layout (MHA, GQA, MQA); the others GQA only, for speed
    (lambda config, batch_size: kvlab.StaticCache(config, batch_size, 64), {"configs": FAST}),
    (SlidingWindowCache, {"window": 6, "configs": FAST}),
    (lambda: SlidingWindowCache(5), {"window": 5, "configs": FAST}),
    (lambda: Window(8), {"window": 8, "configs": FAST}),  # a learner's correct solution
], ids=["dynamic", "static", "sliding-window", "factory", "learners-window"])
def test_caches_that_keep_the_contract_pass(capsys, cache, kwargs):
    ok, out = checked(capsys, cache, **kwargs)
    assert ok, out
    assert out.splitlines()[-1] == "All 4 checks passed."


# --- bugs fail, with a message that names them ---

@pytest.mark.parametrize(("cache", "kwargs", "message"), [
    (BrokenCache, {}, ["FAIL  update", "a value that is not its own", "that value is one of the keys fed"]),
    (OffByOne, {}, ["get_seq_length(0)", "expected: 3, the number of tokens fed", "returned 2 after feeding 3 tokens",
                    "count every token fed: the model uses it"]),
    (Window, {"window": 4, "bug": "counts held tokens"},
     ["returned 4 after feeding 8 tokens", "including evicted ones"]),
    (Window, {"window": 4, "bug": "keeps the oldest"},
     ["SlidingWindowCache(window=4) returns: tokens [4, 5, 6, 7, 8]", "returned tokens [0, 1, 2, 3, 8]",
      "keep the newest tokens"]),
    (Window, {"window": 4, "bug": "ignores reorder"}, ["FAIL  reorder_cache", "index_select(0, beam_idx)"]),
    (Window, {"window": 4, "bug": "evicts on decode only"}, ["FAIL  update", "after 11 tokens",
                                                              "holds 4 tokens per layer", "those of 11"]),
    (Window, {"window": 4, "bug": "keeps one too few"}, ["FAIL  update", "holds 4 tokens per layer",
                                                          "those of 3: check how many tokens update keeps"]),
    (Window, {"window": 4, "bug": "keeps the counter"}, ["FAIL  reset", "gave lengths [11, 11]"]),
    (Window, {"window": 4, "bug": "no nbytes"}, ["FAIL  update", "Check failed: nbytes", "said 0"]),
], ids=["broken-cache", "off-by-one", "counts-held", "keeps-oldest", "no-reorder", "decode-only-eviction",
        "one-too-few", "reset-keeps-counter", "no-nbytes"])
def test_planted_bugs_fail_with_a_message_that_names_them(capsys, cache, kwargs, message):
    window, bug = kwargs.get("window"), kwargs.get("bug")
    target = cache if bug is None else (lambda: Window(window, bug))
    ok, out = checked(capsys, target, window=window, configs=FAST)
    assert ok is False
    for part in message:
        assert part in out, out
    assert "Traceback" not in out


def test_like_compares_with_any_kvlab_cache(capsys):
    from kvlab.compressed_cache import SinkCache

    ok, out = checked(capsys, lambda: SinkCache(6, n_sink=2), like=lambda: SinkCache(6, n_sink=2), configs=FAST)
    assert ok, out
    ok, out = checked(capsys, lambda: Window(6), like=lambda: SinkCache(6, n_sink=2), configs=FAST)
    assert not ok and "compared with kvlab's SinkCache(window=6, n_sink=2)" in out
    assert "the keys SinkCache(window=6, n_sink=2) returns: tokens [0, 1, 4, 5, 6, 7, 8]" in out
    assert "hold the tokens SinkCache(window=6, n_sink=2) holds" in out


def test_a_crash_in_the_learners_code_is_reported_not_raised(capsys):
    ok, out = checked(capsys, Crashes, configs=FAST)
    assert ok is False
    assert "Your code crashed in update()" in out and "KeyError: 'no such key'" in out
    assert "`return key / 0 if layer_idx else {}[\"no such key\"]`" in out  # the line that raised


def test_the_skeleton_is_reported_as_not_written_yet(capsys):
    ok, out = checked(capsys, SlidingWindowSkeleton, window=8, configs=FAST)
    assert ok is False and "Not written yet: update() raised NotImplementedError" in out


def test_a_factory_that_returns_no_cache_is_reported(capsys):
    ok, out = checked(capsys, lambda: [], configs=FAST)
    assert ok is False and "an instance of a kvlab.Cache subclass" in out and "your function returned list: []" in out


@pytest.mark.parametrize(("bad", "error", "match"), [
    (3, TypeError, r"got 3 \(int\)"),
    ("DynamicCache", TypeError, r"got 'DynamicCache' \(str\)"),
    (kvlab.DynamicCache(), TypeError, "not a cache already built: pass DynamicCache"),
    (dict, TypeError, "kvlab.Cache subclass, got the class dict"),
    (kvlab.StaticCache, TypeError, "cannot guess the 3 arguments StaticCache needs"),
])
def test_check_cache_refuses_what_is_not_a_cache_class_or_factory(bad, error, match):
    with pytest.raises(error, match=match):
        check_cache(bad)


@pytest.mark.parametrize(("kwargs", "error"), [({"window": 0}, ValueError), ({"window": 2.0}, TypeError),
                                               ({"configs": ("mla",)}, ValueError),
                                               ({"window": 4, "like": lambda: SlidingWindowCache(4)}, ValueError),
                                               ({"like": SlidingWindowCache(4)}, TypeError)])
def test_check_cache_refuses_bad_settings(kwargs, error):
    with pytest.raises(error):
        check_cache(kvlab.DynamicCache, **kwargs)


# --- check_prediction ---

@pytest.mark.parametrize(("predicted", "measured", "tolerance", "ok", "sentence"), [
    (2000, 2048, 0.1, True, "Your prediction, 2,000, is 2% below the measured 2,048: within the 10% you allowed."),
    (2048, 2048, 0.1, True, "Your prediction, 2,048, is exactly the measured 2,048: within the 10% you allowed."),
    (3.0, 2.5, 0.1, False, "Your prediction, 3, is 20% above the measured 2.5: outside the 10% you allowed."),
    (3.0, 2.5, 0.2, True, "Your prediction, 3, is 20% above the measured 2.5: within the 20% you allowed."),
    (10_000, 2048, 0.5, False, "Your prediction, 10,000, is a factor 4.88 above the measured 2,048: outside the 50% "
                               "you allowed."),
    (1.001, 1.0, 0.01, True, "Your prediction, 1.001, is 0.1% above the measured 1: within the 1% you allowed."),
])
def test_check_prediction_says_how_close_in_relative_error(capsys, predicted, measured, tolerance, ok, sentence):
    assert check_prediction(predicted, measured, tolerance) is ok
    assert capsys.readouterr().out.strip() == sentence


def test_check_prediction_names_the_quantity_and_waits_for_a_prediction(capsys):
    assert check_prediction(None, 5.0, what="the speed-up") is False
    assert check_prediction(5, 5.0, what="the speed-up") is True
    assert capsys.readouterr().out.splitlines() == [
        "Not predicted yet: replace None with your prediction for the speed-up, and run the cell again.",
        "Your prediction for the speed-up, 5, is exactly the measured 5: within the 10% you allowed."]


@pytest.mark.parametrize(("args", "error", "match"), [
    (("2 KiB", 2048), TypeError, "predicted"), ((2048, None), TypeError, "measured"),
    ((1, 0), ValueError, "measured is 0"), ((1, 2, -0.1), ValueError, "tolerance"),
    ((True, 1), TypeError, "predicted"),
])
def test_check_prediction_refuses_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        check_prediction(*args)

"""kvlab.widgets: each widget draws what the functions it wraps compute, and a bad setting gives a message."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import pytest

import kvlab
from kvlab import flops, memory, widgets

LLAMA7 = dict(n_layer=32, d_model=4096, n_head=32, n_kv_head=32, n_params_billion=6.738415616)


def _controls(box):
    return {child.description: child for child in box.children if hasattr(child, "description")}


# --- chapter 02: attention h to hello --------------------------------------------------------------------------------


def test_cache_stepper_widget():
    stepper = widgets.cache_stepper(5, list("hello"), t=0)
    slider = stepper.children[0]
    assert (slider.min, slider.max, slider.value) == (0, 5, 0)
    slider.value = 5  # redraw at the largest step
    plt.close("all")


@pytest.mark.parametrize("bad, error, parameter", [
    (dict(T=0), ValueError, "T must"), (dict(T=True), TypeError, "T must"), (dict(T=3, t=4), ValueError, "t must"),
    (dict(T=3, t=-1), ValueError, "t must"), (dict(T=2, tokens=list("abc")), ValueError, "tokens"),
])
def test_cache_stepper_widget_rejects_bad_settings(bad, error, parameter):
    with pytest.raises(error, match=parameter):
        widgets.cache_stepper(**bad)


# --- chapter 04: cost with and without cache -------------------------------------------------------------------------


@pytest.mark.parametrize("d_model, n_layer, T", [
    (768, 12, 8192),  # the notebook's GPT-2 small
    (768, 12, 16384),
    (16, 1, 1),  # smallest everything, T = 1: single points
    (16, 128, widgets.COST_LENGTHS[-1]),  # largest T and n_layer
    (widgets.COST_D_MODELS[-1], 1, widgets.COST_LENGTHS[-1]),  # largest d_model
    (widgets.COST_D_MODELS[-1], 128, 1),
    (1, 1, 2),  # below the slider: still valid arithmetic
])
def test_draw_cost_explorer_ordinary_and_extreme(d_model, n_layer, T):
    fig = widgets.draw_cost_explorer(d_model, n_layer, T)
    step_ax, total_ax = fig.axes[:2]
    config = kvlab.GPTConfig(vocab_size=50257, n_layer=n_layer, n_head=1, d_model=d_model)
    lines = {line.get_label(): line for line in step_ax.get_lines()}
    for label, use_cache in (("with cache", True), ("without cache", False)):
        for part in ("dense", "attention"):
            xs, ys = lines[f"{label}: {part}"].get_data()
            assert xs[0] == 1 and xs[-1] == T
            assert list(ys) == [flops.decode_step_flops_split(config, int(t), use_cache)[part] for t in xs]
    totals = {line.get_label(): line for line in total_ax.get_lines()}
    xs, ys = totals["without cache: attention"].get_data()
    assert ys[-1] == flops.generation_flops_split(config, 1, T, False)["attention"]
    t_star = float(flops.attention_crossover(config))
    title = fig._suptitle.get_text()
    assert f"{t_star:,.0f}" in title
    assert ("attention outweighs" in title) == (T >= t_star)
    if T >= t_star:  # a whole sentence, not "... from t* = 6,702 tokens on"
        assert title.endswith(f"in every step past t* = {t_star:,.0f} tokens")


@pytest.mark.parametrize("name", ["d_model", "n_layer", "T"])
@pytest.mark.parametrize("bad", [0, -1, -4096])
def test_draw_cost_explorer_rejects_non_positive(name, bad):
    values = {**dict(d_model=768, n_layer=12, T=1024), name: bad}
    with pytest.raises(ValueError, match=f"^{name} must"):
        widgets.draw_cost_explorer(**values)


@pytest.mark.parametrize("bad", [2.5, "64", True, None])
def test_draw_cost_explorer_rejects_non_ints(bad):
    with pytest.raises(TypeError, match="d_model"):
        widgets.draw_cost_explorer(bad, 12, 1024)
    with pytest.raises(ValueError, match="vocab_size"):
        widgets.draw_cost_explorer(768, 12, 1024, vocab_size=0)


def test_cost_explorer_builds_and_checks_its_start_values():
    ui = widgets.cost_explorer()
    assert [child.description for child in ui.children[:3]] == ["d_model", "n_layer", "T (tokens)"]
    with pytest.raises(ValueError, match="d_model"):
        widgets.cost_explorer(d_model=100)
    with pytest.raises(ValueError, match="^T must"):
        widgets.cost_explorer(T=1000)
    with pytest.raises(ValueError, match="n_layer"):
        widgets.cost_explorer(n_layer=0)


# --- chapter 06: kv cache memory -------------------------------------------------------------------------------------


def test_calculator_ordinary_setting():
    text, fig = widgets.draw_memory_calculator(**LLAMA7, batch_size=16, seq_len=4096, dtype="fp16", gpu_gib=24)
    assert text == memory.format_report(memory.preset_report("llama2-7b", 16, 4096, gpu_gib=24))
    assert text.startswith("Llama 2 7B (")  # recognised as the preset
    assert isinstance(fig, matplotlib.figure.Figure)


@pytest.mark.parametrize("preset_id", sorted(memory.MODEL_PRESETS))
def test_calculator_recognises_every_preset_from_its_billions(preset_id):
    p = memory.get_preset(preset_id)
    text, _ = widgets.draw_memory_calculator(p.n_layer, p.d_model, p.n_head, p.n_kv_head, 1, 128, "fp16", 141,
                                             p.n_params / 1e9)
    assert text == memory.format_report(memory.preset_report(p, 1, 128, gpu_gib=141))


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (dict(batch_size=0, seq_len=0), "KV cache: 0 bytes = 0 B"),
        (dict(batch_size=0), "KV cache: 0 bytes = 0 B"),
        (dict(seq_len=0), "KV cache: 0 bytes = 0 B"),
        (dict(n_params_billion=0), "weights: 0 parameters"),
        (dict(batch_size=10**9, seq_len=10**12), "does NOT fit"),
        (dict(n_layer=10**6, d_model=10**6, n_head=10**3, n_kv_head=10**3), "does NOT fit"),
        (dict(gpu_gib=10**15, n_params_billion=1e6), "fits: this cache takes 0.0% of what is left"),
        (dict(gpu_gib=16, n_params_billion=175), "the weights alone need 2,037% of the GPU"),  # 350e9 / 16 GiB
    ],
)
def test_calculator_extreme_settings_give_text_and_a_figure(setting, expected):
    values = {**LLAMA7, "batch_size": 16, "seq_len": 4096, "dtype": "fp16", "gpu_gib": 80, **setting}
    text, fig = widgets.draw_memory_calculator(**values)
    assert expected in text and "Traceback" not in text
    assert isinstance(fig, matplotlib.figure.Figure)


def test_weights_larger_than_the_gpu():
    # 175e9 · 2 bytes / (16 · 2**30) = 20.37: the weights alone need 2,037% of a 16 GiB GPU
    text, fig = widgets.draw_memory_calculator(96, 12288, 96, 96, 16, 1024, "fp16", 16, 175)
    assert "does not fit: the weights alone need 2,037% of the GPU" in text
    assert "largest batch" not in text
    assert "the weights alone exceed 16 GiB" in fig.axes[0].get_title()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (dict(n_layer=0), "n_layer must be an int >= 1, got 0"),
        (dict(d_model=0), "hidden_size must be an int >= 1, got 0"),
        (dict(n_head=0), "n_head must be an int >= 1, got 0"),
        (dict(n_kv_head=0), "n_kv_head must be an int >= 1, got 0"),
        (dict(n_kv_head=3), "n_head must be divisible by n_kv_head, got n_head=32, n_kv_head=3"),
        (dict(n_head=48), "hidden_size must be divisible by n_head, got hidden_size=4096, n_head=48"),
        (dict(n_kv_head=64), "n_head must be divisible by n_kv_head, got n_head=32, n_kv_head=64"),
        (dict(gpu_gib=0), "gpu_gib must be a finite number > 0, got 0.0"),
        (dict(batch_size=-1), "batch_size must be an int >= 0, got -1"),
        (dict(dtype="fp8"), "dtype must be one of"),
        (dict(weight_dtype="fp64"), "weight_dtype must be one of"),
        (dict(n_params_billion=float("nan")), "n_params_billion must be a finite number >= 0, got nan"),
        (dict(n_params_billion=-1.0), "n_params_billion must be a finite number >= 0, got -1.0"),
        (dict(n_params_billion="7"), "n_params_billion must be a finite number >= 0, got '7'"),
        (dict(n_layer=2.5), "n_layer must be an int >= 1, got 2.5"),
        (dict(gpu_gib=10**400), "the numbers are too large to show"),
    ],
)
def test_calculator_invalid_settings_give_a_message_not_a_traceback(setting, message):
    values = {**LLAMA7, "batch_size": 16, "seq_len": 4096, "dtype": "fp16", "gpu_gib": 80, **setting}
    text, fig = widgets.draw_memory_calculator(**values)
    assert text.startswith("Cannot compute this setting: ") and message in text
    assert fig is None


def test_calculator_widget_wires_presets_to_the_controls(capsys):
    box = widgets.memory_calculator(preset="llama2-7b", batch_size=16, seq_len=4096, gpu_gib=24)
    controls = _controls(box)
    assert controls["K/V heads n_kv_head"].value == 32
    assert "Llama 2 7B (" in capsys.readouterr().out  # outside a notebook the Output widget prints through
    controls["model"].value = "mistral-7b"
    assert controls["K/V heads n_kv_head"].value == 8 and controls["layers n_layer"].value == 32
    out = capsys.readouterr().out
    assert out.count("KV cache:") == 1 and "Mistral 7B (" in out  # one redraw per preset, not one per slider
    controls["K/V heads n_kv_head"].value = 3
    assert "Cannot compute this setting" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(preset="gpt5"), ValueError, "preset"),
        (dict(gpu_gib=33), ValueError, "gpu_gib"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=16.0), TypeError, "batch_size"),
        (dict(seq_len=10**6), ValueError, "seq_len"),
    ],
)
def test_calculator_widget_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        widgets.memory_calculator(**kwargs)


def test_calculator_dropdown_follows_the_sliders(capsys):
    box = widgets.memory_calculator(preset="llama2-7b", batch_size=16, seq_len=4096, gpu_gib=24)
    controls = _controls(box)
    choose, kv_heads = controls["model"], controls["K/V heads n_kv_head"]
    assert choose.value == "llama2-7b"
    capsys.readouterr()
    kv_heads.value = 8  # a Llama 2 7B with GQA: no published model has this shape
    assert choose.value == widgets.CUSTOM and choose.label == "custom"
    assert "custom model" in capsys.readouterr().out
    choose.value = "llama2-7b"  # picking the same preset again re-applies it
    assert kv_heads.value == 32
    out = capsys.readouterr().out
    assert out.count("KV cache:") == 1 and "Llama 2 7B (" in out
    controls["batch"].value = 4  # not part of the model's shape: still the preset
    assert choose.value == "llama2-7b"
    kv_heads.value, controls["parameters (billions)"].value = 8, 7.0
    kv_heads.value = 32  # back to 32 heads, but with 7.0 billion parameters: still custom
    assert choose.value == widgets.CUSTOM
    controls["parameters (billions)"].value = memory.get_preset("llama2-7b").n_params / 1e9
    assert choose.value == "llama2-7b"  # the sliders hold the preset's shape again, and the dropdown says so


def test_calculator_seq_len_slider_is_logarithmic_and_draws_its_extremes(capsys):
    stops = widgets.SEQ_LENS
    assert stops[0] == 1 and stops[-1] == 131072 and len(stops) <= 40
    assert all(1 < b / a <= 2 for a, b in zip(stops, stops[1:]))  # evenly spread on a log scale
    assert {2048, 4096, 8192, 32768} <= set(stops)  # common context lengths are stops
    box = widgets.memory_calculator(preset="llama2-7b", batch_size=1, seq_len=4096, gpu_gib=80)
    slider = _controls(box)["seq_len (tokens)"]
    assert slider.label == "4,096"
    for seq_len in (stops[0], stops[-1]):
        capsys.readouterr()
        slider.value = seq_len
        out = capsys.readouterr().out
        assert f"seq_len {seq_len}, fp16" in out and "Cannot compute" not in out  # an int, as the report prints
        assert isinstance(slider.value, int)
    with pytest.raises(ValueError, match="seq_len"):
        widgets.memory_calculator(seq_len=5000)  # not a stop of the slider

"""Interactive widgets for the chapters. They only wire sliders to kvlab's pure functions and plots.

Every widget has a plain drawing/update function (a function of the slider values that returns a Figure or text)
which the widget calls and which tests call directly, with ordinary and extreme values, without a browser.
ipywidgets is imported here only, never by ``import kvlab``.
"""

from __future__ import annotations

import ipywidgets as widgets

from . import memory, plots
from .checks import check_int, check_number, check_one_of
from .plots.attention import position_labels

__all__: list[str] = ["GPU_MEMORY_GIB", "SEQ_LENS", "CUSTOM", "draw_memory_calculator", "memory_calculator",
                     "cache_stepper", "COST_D_MODELS", "COST_LENGTHS", "draw_cost_explorer", "cost_explorer"]


# --- chapter 06: KV-cache memory ---

GPU_MEMORY_GIB = (16, 24, 40, 80, 141)  # common accelerator sizes, in GiB
# The seq_len slider's stops: powers of two and the halfway 1.5 · 2^k, so 1 to 131,072 tokens spread evenly on a
# log scale (34 stops) instead of 570 tokens a pixel on a linear slider; every common context length is a stop.
SEQ_LENS = tuple(sorted({2**k for k in range(18)} | {3 * 2**k for k in range(16)}))


CUSTOM = "custom"  # the model dropdown's entry for sliders that match no preset


def _preset_key(n_layer: int, d_model: int, n_head: int, n_kv_head: int, n_params: int) -> str | None:
    """The key of the published model with exactly this shape, or None (a custom model)."""
    for key, preset in memory.MODEL_PRESETS.items():
        if (preset.n_layer, preset.d_model, preset.n_head, preset.n_kv_head, preset.n_params) == (
                n_layer, d_model, n_head, n_kv_head, n_params):
            return key
    return None


def draw_memory_calculator(n_layer: int, d_model: int, n_head: int, n_kv_head: int, batch_size: int, seq_len: int,
                           dtype: str = "fp16", gpu_gib: float = 80, n_params_billion: float = 7.0,
                           weight_dtype: str | None = None):
    """The calculator for one setting of its controls: (report text, Figure), or (message, None) if invalid.

    All arithmetic is `kvlab.memory.memory_report`; this only turns a bad setting into a readable message
    (never a traceback, since a learner dragging sliders will hit them) and draws the report.
    """
    try:
        n_params = round(check_number("n_params_billion", n_params_billion, 0) * 1e9)
        key = _preset_key(n_layer, d_model, n_head, n_kv_head, n_params)
        preset = None if key is None else memory.MODEL_PRESETS[key]  # its name and sliding window apply
        report = memory.memory_report(n_layer, d_model, n_head, n_kv_head, batch_size, seq_len, dtype,
                                      gpu_gib=gpu_gib, n_params=n_params, weight_dtype=weight_dtype,
                                      name=preset.name if preset else "custom model",
                                      sliding_window=preset.sliding_window if preset else None)
        text = memory.format_report(report)  # exact integers: prints any size
        figure = plots.plot_memory_report(report)  # floats: a plot's axes end near 10^308
    except (ValueError, TypeError) as error:
        return f"Cannot compute this setting: {error}", None
    except OverflowError:  # beyond float range (~1e308): not a setting worth a traceback
        return "Cannot compute this setting: the numbers are too large to show (over 10^308)", None
    return text, figure


def memory_calculator(preset: str = "llama2-7b", batch_size: int = 16, seq_len: int = 4096,
                      gpu_gib: float = 80) -> widgets.Widget:
    """The KV-cache memory calculator: pick a model (or set its sizes), a batch, a length, a dtype and a GPU.

    The model dropdown follows the sliders: it names the preset whose shape they hold, or "custom" once one moves
    away from it, so that picking a preset again (even the same one) re-applies it.
    """
    import matplotlib.pyplot as plt
    from IPython.display import display

    check_one_of("preset", preset, [None, *memory.MODEL_PRESETS])  # None: a custom model
    check_one_of("gpu_gib", gpu_gib, GPU_MEMORY_GIB)
    check_int("batch_size", batch_size, 1, 256)  # the sliders' ranges
    check_one_of("seq_len", check_int("seq_len", seq_len, 1, 131072), SEQ_LENS)  # the slider's stops
    style = {"description_width": "150px"}
    layout = widgets.Layout(width="480px")

    def slider(description, value, low, high, step=1):
        return widgets.IntSlider(value=value, min=low, max=high, step=step, description=description,
                                 continuous_update=False, style=style, layout=layout)

    # "custom" is a value of its own: a Dropdown shows value None as no selection at all (a blank box)
    choose = widgets.Dropdown(options=[("custom", CUSTOM)] + [(p.name, key) for key, p in memory.MODEL_PRESETS.items()],
                              value=CUSTOM if preset is None else preset, description="model", style=style,
                              layout=layout)
    controls = dict(
        n_layer=slider("layers n_layer", 32, 1, 128),
        d_model=slider("hidden size d_model", 4096, 64, 16384, 64),
        n_head=slider("heads n_head", 32, 1, 128),
        n_kv_head=slider("K/V heads n_kv_head", 32, 1, 128),
        batch_size=slider("batch", batch_size, 1, 256),
        seq_len=widgets.SelectionSlider(options=[(f"{n:,}", n) for n in SEQ_LENS], value=seq_len,
                                        description="seq_len (tokens)", continuous_update=False, style=style,
                                        layout=layout),
        dtype=widgets.Dropdown(options=list(memory.DTYPE_BYTES), value="fp16", description="cache dtype",
                               style=style, layout=layout),
        gpu_gib=widgets.Dropdown(options=[(f"{g} GiB", g) for g in GPU_MEMORY_GIB], value=gpu_gib,
                                 description="GPU memory", style=style, layout=layout),
        n_params_billion=widgets.BoundedFloatText(value=7.0, min=0, max=1e6, description="parameters (billions)",
                                                  style=style, layout=layout),
        weight_dtype=widgets.Dropdown(options=[("same as the cache", None)] + [(d, d) for d in memory.DTYPE_BYTES],
                                      value="fp16", description="weights dtype", style=style, layout=layout),
    )
    out = widgets.Output()
    busy = [False]  # set while a preset fills in the sliders, so they redraw once, not once per slider

    def follow_the_sliders() -> None:
        """Name the preset the sliders hold, or "custom": what the report says, the dropdown says too."""
        values = {name: controls[name].value for name in ("n_layer", "d_model", "n_head", "n_kv_head")}
        key = _preset_key(**values, n_params=round(controls["n_params_billion"].value * 1e9))
        busy[0] = True  # naming the preset must not apply it again
        try:
            choose.value = CUSTOM if key is None else key
        finally:
            busy[0] = False

    def redraw(_change=None):
        if busy[0]:
            return
        follow_the_sliders()
        text, fig = draw_memory_calculator(**{name: c.value for name, c in controls.items()})
        with out:
            out.clear_output(wait=True)
            print(text)
            if fig is not None:
                display(fig)
                plt.close(fig)

    def apply_preset(_change=None):
        if busy[0]:
            return
        if choose.value != CUSTOM:
            p = memory.get_preset(choose.value)
            busy[0] = True
            try:
                for name, value in (("n_layer", p.n_layer), ("d_model", p.d_model), ("n_head", p.n_head),
                                    ("n_kv_head", p.n_kv_head), ("n_params_billion", p.n_params / 1e9)):
                    controls[name].value = value
            finally:
                busy[0] = False
        redraw()

    choose.observe(apply_preset, names="value")
    for control in controls.values():
        control.observe(redraw, names="value")
    apply_preset()
    return widgets.VBox([choose, *controls.values(), out])


# --- chapter 02: attention from "h" to "hello" ---


def cache_stepper(T: int = 10, tokens=None, t: int = 1) -> widgets.interactive:
    """A slider over decode steps t = 0..T that redraws `kvlab.plots.plot_cache_step(t, T, tokens)`.

    Left: without a cache, step t recomputes every row 1..t of the score matrix. Right: with a KV cache, only row t,
    reading k_1..k_{t-1} (and v) from the cache. The drawing is `plot_cache_step`; tests call that directly.
    """
    import matplotlib.pyplot as plt

    T = check_int("T", T, 1)
    t = check_int("t", t, 0, T)
    position_labels(T, tokens)  # fail now, not on the first redraw, if tokens do not fit T

    def draw(t: int) -> None:
        plots.plot_cache_step(t, T, tokens)
        plt.show()  # show here and return None: interactive would otherwise display the returned figure twice

    return widgets.interactive(draw, t=widgets.IntSlider(value=t, min=0, max=T, description="step t"))


# --- chapter 04: cost with and without a cache ---

COST_D_MODELS = (16, 32, 64, 128, 256, 512, 768, 1024, 1600, 2048, 4096, 8192, 12288, 16384)  # slider stops
COST_LENGTHS = tuple(2**k for k in range(18))  # T from 1 to 131,072 tokens


def draw_cost_explorer(d_model: int, n_layer: int, T: int, vocab_size: int = 50257):
    """Dense vs attention FLOPs, per decode step and in total, with and without a cache, for one model shape.

    A plain function of the sliders (tests call it). The model is a GPT-2-shaped `GPTConfig` (multi-head attention;
    the number of heads does not change the FLOPs); `vocab_size` defaults to GPT-2's. All numbers come from
    `kvlab.flops` (closed forms, so T = 131,072 draws instantly); the picture from `kvlab.plots.plot_cost_split`.
    """
    import numpy as np

    from . import flops
    from .model import GPTConfig

    d_model, n_layer = check_int("d_model", d_model, 1), check_int("n_layer", n_layer, 1)
    T, vocab_size = check_int("T", T, 1), check_int("vocab_size", vocab_size, 1)
    config = GPTConfig(vocab_size=vocab_size, n_layer=n_layer, n_head=1, d_model=d_model, max_seq_len=T)
    lengths = sorted({int(round(t)) for t in np.geomspace(1, T, 48)})
    modes = {"with cache": True, "without cache": False}
    step = {mode: {"dense": [], "attention": []} for mode in modes}
    total = {mode: {"dense": [], "attention": []} for mode in modes}
    for mode, use_cache in modes.items():
        for t in lengths:
            for part, value in flops.decode_step_flops_split(config, t, use_cache).items():
                step[mode][part].append(value)
            for part, value in flops.generation_flops_split(config, 1, t, use_cache).items():
                total[mode][part].append(value)
    t_star = flops.attention_crossover(config)
    verdict = (f"attention outweighs the dense matmuls in every step past t* = {float(t_star):,.0f} tokens"
               if T >= t_star else
               f"dense matmuls dominate every step up to T = {T:,} (t* = {float(t_star):,.0f})")
    title = f"d_model = {d_model:,}, n_layer = {n_layer}, vocab = {vocab_size:,}: {verdict}"
    return plots.plot_cost_split(lengths, step, lengths, total, t_star=t_star, title=title)


def cost_explorer(d_model: int = 768, n_layer: int = 12, T: int = 8192, vocab_size: int = 50257) -> widgets.interactive:
    """Sliders for d_model, n_layer and T that redraw `draw_cost_explorer` (defaults: GPT-2 small's shape)."""
    import matplotlib.pyplot as plt

    check_one_of("d_model", d_model, COST_D_MODELS)  # the sliders' stops and range
    check_one_of("T", T, COST_LENGTHS)
    check_int("n_layer", n_layer, 1, 128)
    draw_cost_explorer(d_model, n_layer, T, vocab_size)  # fail now on a bad vocab_size, not on the first redraw
    plt.close("all")

    def draw(d_model: int, n_layer: int, T: int) -> None:
        draw_cost_explorer(d_model, n_layer, T, vocab_size)
        plt.show()  # show here and return None: interactive would otherwise display the returned figure twice

    style = {"description_width": "80px"}
    return widgets.interactive(
        draw,
        d_model=widgets.SelectionSlider(options=COST_D_MODELS, value=d_model, description="d_model",
                                        continuous_update=False, style=style),
        n_layer=widgets.IntSlider(value=n_layer, min=1, max=128, description="n_layer", continuous_update=False,
                                  style=style),
        T=widgets.SelectionSlider(options=COST_LENGTHS, value=T, description="T (tokens)", continuous_update=False,
                                  style=style),
    )

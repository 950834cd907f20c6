"""The Markdown pages in docs/: every number on the cheat-sheet recomputed with kvlab, every link to a notebook alive,
every glossary term defined where it says, and the instructor's quoted numbers printed by the chapters themselves.

The cheat-sheet is checked strictly: its worked examples are table rows this file rebuilds from kvlab (the row's
code column is evaluated, and the row must match character for character), its formulas are listed here with a
Python twin that is compared with kvlab on every model preset, and no digit may appear anywhere else except in
model, GPU and dtype names and in chapter links. A mutation test changes each number of the page in turn and
checks that one of these rules then fails.
"""

import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest

from kvlab import flops, hardware, memory
from tests.helpers import chapter_minutes, notebook_cells, printed_text

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHEATSHEET = DOCS / "cheatsheet.md"
GLOSSARY = DOCS / "glossary.md"
INSTRUCTOR = DOCS / "instructor.md"
NOTEBOOK_LINK = re.compile(r"\]\((\.\./(?:notebooks|solutions)/[^)#\s]+)(?:#[^)]*)?\)")


# --- the cheat-sheet's worked examples: (example, value as the page prints it from kvlab's result, kvlab code) ---

def _kv_bytes_row(preset_var: str, batch: int, seq_len: int) -> Callable:
    def value(n, ns):
        p = ns[preset_var]
        return (f"2 · {p.n_layer} · {batch} · {seq_len:,} · {p.d_model:,} · 2 = {n:,} bytes = "
                f"{memory.format_bytes(n)}")
    return value


def _per_token_row(preset_var: str) -> Callable:
    def value(n, ns):
        p = ns[preset_var]
        kv = f"{p.n_kv_head} · {p.head_dim}" if p.n_kv_head != p.n_head else f"{p.d_model:,}"
        return f"2 · {p.n_layer} · {kv} · 2 = {n:,} bytes = {memory.format_bytes(n)}"
    return value


def _share(split, ns):
    t_star = flops.attention_crossover(ns["gpt3"])
    share = split["attention"] / (split["attention"] + split["dense"])
    return f"2,048 / (2,048 + {float(t_star):,.0f}) = {share:.1%}"


def _saving(ratio, ns):
    T = 2048
    return f"(T+1)/2 = {(T + 1) / 2:,.1f} ≤ {ratio:,.1f}× ≤ (2T+1)/3 = {(2 * T + 1) / 3:,.1f}"


def _coefficients(da, ns):
    return f"D = {da[0]:,} FLOPs, A = {da[1]:,} FLOPs"


def _crossover(preset_var: str) -> Callable:
    def value(t_star, ns):
        p = ns[preset_var]
        return f"6 · {p.d_model:,} + {p.vocab_size:,} / (2 · {p.n_layer}) = {float(t_star):,.0f} tokens"
    return value


def _roofline(seconds, ns):
    f, b, gpu = flops.forward_flops(ns["llama7"], 1, 1000), flops.bytes_moved(ns["llama7"], 1, 1000, 2), ns["h100"]
    return (f"max({f:,} FLOPs / {gpu.fp16_flops / 1e12:g} TFLOP/s, {b:,} bytes / {gpu.bandwidth / 1e12:g} TB/s) = "
            f"max({f / gpu.fp16_flops * 1e3:.3f}, {b / gpu.bandwidth * 1e3:.2f}) ms = {seconds * 1e3:.2f} ms, "
            f"at most {1 / seconds:,.0f} tokens/s")


def _ridge(gpu_var: str) -> Callable:
    def value(ridge, ns):
        gpu = ns[gpu_var]
        return f"{gpu.fp16_flops / 1e12:g} TFLOP/s / {gpu.bandwidth / 1e12:g} TB/s = {ridge:.1f} FLOP/byte"
    return value


WORKED = [  # (example column, its names read from the set-up's presets; function(value, namespace) -> value column;
    # code column)
    ("fp32, fp16, bf16, int8, int4", lambda sizes, ns: ", ".join(f"{x:g}" for x in sizes) + " bytes per number",
     "[memory.bytes_per_element(dtype) for dtype in memory.DTYPE_BYTES]"),
    ("P = 1,000, N = 200, without a cache", lambda n, ns: f"1,000 · 200 + 200 · 199 / 2 = {n:,} positions",
     "sum(flops.positions_processed(1000, 200, use_cache=False))"),
    ("P = 1,000, N = 200, with a cache",
     lambda n, ns: f"1,000 + 200 − 1 = {n:,} positions, "
                   f"{sum(flops.positions_processed(1000, 200, use_cache=False)) / n:.0f}× fewer",
     "sum(flops.positions_processed(1000, 200))"),
    ("{gpt3.name}, batch 16, 1,024 tokens, fp16", _kv_bytes_row("gpt3", 16, 1024),
     "gpt3.kv_cache_bytes(16, 1024, fp16)"),
    ("{llama7.name}, one token, fp16", _per_token_row("llama7"), "memory.kv_bytes_per_token(llama7, fp16)"),
    ("{llama70.name} (GQA: 8 K/V heads for 64 query heads), one token, fp16", _per_token_row("llama70"),
     "memory.kv_bytes_per_token(llama70, fp16)"),
    ("{llama70.name}'s shape as MHA (64 K/V heads), one token, fp16",
     lambda n, ns: f"2 · 80 · 64 · 128 · 2 = {n:,} bytes = {memory.format_bytes(n)}, "
                   f"{n // memory.kv_bytes_per_token(ns['llama70'], 2)}× more",
     "memory.kv_cache_bytes(80, 1, 1, 8192, fp16)"),
    ("{llama7.name}, fp16 weights and cache, on a 24 GiB GPU",
     lambda n, ns: f"(24 GiB − {memory.format_bytes(ns['llama7'].weight_bytes(2)).split(' (')[0]} of weights) / "
                   f"{memory.kv_bytes_per_token(ns['llama7'], 2):,} bytes = {n:,} cached tokens (batch × length)",
     "memory.max_tokens_that_fit(llama7, 24 * 2**30, fp16)"),
    ("{gpt2.name}", lambda da, ns: _coefficients(da, ns), "flops.decode_step_coefficients(gpt2)"),
    ("{gpt3.name}, step at t = 2,048, with a cache", lambda n, ns: f"D + A · t = {n:,} FLOPs",
     "flops.decode_step_flops(gpt3, 2048)"),
    ("{gpt3.name}, step at t = 2,048, without a cache", lambda n, ns: f"t · (D + A · t) = {n:,} FLOPs, "
                   f"{n // flops.decode_step_flops(ns['gpt3'], 2048):,}× more",
     "flops.decode_step_flops(gpt3, 2048, use_cache=False)"),
    ("{gpt3.name}, 2,048 tokens from a 1-token prompt, with a cache", lambda n, ns: f"{n:,} FLOPs",
     "flops.generation_flops(gpt3, 1, 2048)"),
    ("{gpt3.name}, 2,048 tokens from a 1-token prompt, without a cache", lambda n, ns: f"{n:,} FLOPs",
     "flops.generation_flops(gpt3, 1, 2048, use_cache=False)"),
    ("{gpt3.name}, T = 2,048: the saving", _saving,
     "flops.generation_flops(gpt3, 1, 2048, use_cache=False) / flops.generation_flops(gpt3, 1, 2048)"),
    ("{gpt2.name}", _crossover("gpt2"), "flops.attention_crossover(gpt2)"),
    ("{gpt3.name}", _crossover("gpt3"), "flops.attention_crossover(gpt3)"),
    ("{gpt3.name} at t = 2,048: attention's share of a cached step", _share,
     "flops.decode_step_flops_split(gpt3, 2048)"),
    ("{llama7.name}, prefill of 512 tokens, fp16",
     lambda x, ns: f"{x:.1f} FLOP/byte (2P / s = {2 * 512 / ns['fp16']:g})",
     "flops.arithmetic_intensity(llama7, 512, 0, fp16)"),
    ("{llama7.name}, decode, batch 1, 1,000 tokens cached, fp16",
     lambda x, ns: f"{x:.2f} FLOP/byte (2 / s = {2 / ns['fp16']:g})",
     "flops.arithmetic_intensity(llama7, 1, 1000, fp16)"),
    ("{gpt2.name}, decode, batch 64, 16 tokens cached per row, fp16", lambda x, ns: f"{x:.1f} FLOP/byte",
     "flops.arithmetic_intensity(gpt2, 1, 16, fp16, batch_size=64)"),
    ("{llama7.name}, one decode step over 1,000 cached tokens, fp16, {h100.name}", _roofline,
     "hardware.decode_step_seconds(llama7, 1001, h100.fp16_flops, h100.bandwidth)"),
    ("{h100.name}, dense fp16", _ridge("h100"), 'h100.ridge_point("fp16")'),
    ("{a100.name}, dense fp16", _ridge("a100"), 'a100.ridge_point("fp16")'),
]


# --- the cheat-sheet's formulas, as the page writes them, with a Python twin compared with kvlab ---

def _sizes(p) -> dict:
    """The cheat-sheet's symbols for one preset."""
    return dict(L=p.n_layer, h=p.d_model, H=p.n_head, Hkv=p.n_kv_head, d=p.head_dim, V=p.vocab_size)


def _twin_checks():
    """(formula as written on the page, check(preset) -> (twin's value, kvlab's value)).

    The twin is the page's formula typed in Python, symbol for symbol, at arbitrary sizes (B, T, s, t, P, N below):
    the two must agree on every model preset, GQA ones included, so a formula on the page that no longer says what
    kvlab computes fails here, and one whose text changes fails `cheatsheet_problems`.
    """
    B, T, s, t, P, N = 3, 37, 2, 29, 11, 17
    DA = flops.decode_step_coefficients
    sizes = _sizes

    return [
        (r"\text{positions}_\text{without} = P \cdot N + \frac{N \cdot (N - 1)}{2}",
         lambda p: (P * N + Fraction(N * (N - 1), 2), sum(flops.positions_processed(P, N, use_cache=False)))),
        (r"\text{positions}_\text{with} = P + N - 1",
         lambda p: (P + N - 1, sum(flops.positions_processed(P, N)))),
        (r"M_\text{KV} = 2 \cdot L \cdot B \cdot T \cdot H_\text{kv} \cdot d \cdot s",
         lambda p: ((lambda z: 2 * z["L"] * B * T * z["Hkv"] * z["d"] * s)(sizes(p)), p.kv_cache_bytes(B, T, s))),
        (r"M_\text{KV} = 2 \cdot L \cdot B \cdot T \cdot h \cdot s",  # MHA: every preset's shape with H K/V heads
         lambda p: (2 * p.n_layer * B * T * p.d_model * s,
                    memory.kv_cache_bytes(p.n_layer, B, T, p.d_model, s, n_head=p.n_head, n_kv_head=p.n_head))),
        (r"m_\text{token} = 2 \cdot L \cdot H_\text{kv} \cdot d \cdot s",
         lambda p: ((lambda z: 2 * z["L"] * z["Hkv"] * z["d"] * s)(sizes(p)), memory.kv_bytes_per_token(p, s))),
        (r"D = 2 \cdot L \cdot \left(h \cdot (h + 2 \cdot H_\text{kv} \cdot d) + 9 \cdot h^2\right) "
         r"+ 2 \cdot h \cdot V",
         lambda p: ((lambda z: 2 * z["L"] * (z["h"] * (z["h"] + 2 * z["Hkv"] * z["d"]) + 9 * z["h"] ** 2)
                     + 2 * z["h"] * z["V"])(sizes(p)), DA(p)[0])),
        (r"A = 4 \cdot L \cdot h",
         lambda p: (4 * p.n_layer * p.d_model, DA(p)[1])),
        (r"F_\text{with}(t) = D + A \cdot t",
         lambda p: (DA(p)[0] + DA(p)[1] * t, flops.decode_step_flops(p, t))),
        (r"F_\text{without}(t) = t \cdot (D + A \cdot t)",
         lambda p: (t * (DA(p)[0] + DA(p)[1] * t), flops.decode_step_flops(p, t, use_cache=False))),
        (r"G_\text{with} = D \cdot T + A \cdot \frac{T \cdot (T+1)}{2}",
         lambda p: (DA(p)[0] * T + DA(p)[1] * Fraction(T * (T + 1), 2), flops.generation_flops(p, 1, T))),
        (r"G_\text{without} = D \cdot \frac{T \cdot (T+1)}{2} + A \cdot \frac{T \cdot (T+1) \cdot (2T+1)}{6}",
         lambda p: (DA(p)[0] * Fraction(T * (T + 1), 2) + DA(p)[1] * Fraction(T * (T + 1) * (2 * T + 1), 6),
                    flops.generation_flops(p, 1, T, use_cache=False))),
        (r"\frac{T+1}{2} \le \frac{G_\text{without}}{G_\text{with}} \le \frac{2T+1}{3}",
         lambda p: (True, Fraction(T + 1, 2) <= Fraction(flops.generation_flops(p, 1, T, use_cache=False),
                                                          flops.generation_flops(p, 1, T)) <= Fraction(2 * T + 1, 3))),
        (r"t^* = \frac{D}{A} = 6 \cdot h + \frac{V}{2 \cdot L}",
         lambda p: (Fraction(DA(p)[0], DA(p)[1]) if p.n_kv_head != p.n_head else 6 * p.d_model
                    + Fraction(p.vocab_size, 2 * p.n_layer), flops.attention_crossover(p))),
        (r"\frac{\text{attention}}{\text{attention} + \text{dense}} = \frac{t}{t + t^*}",
         lambda p: (Fraction(t) / (t + flops.attention_crossover(p)),
                    (lambda split: Fraction(split["attention"], split["attention"] + split["dense"]))(
                        flops.decode_step_flops_split(p, t)))),
        (r"\text{bytes} = N_\text{params} \cdot s + M_\text{KV}(B, t_\text{past}) + M_\text{KV}(B, n_\text{new})",
         lambda p: (p.n_params * s + p.kv_cache_bytes(B, P, s) + p.kv_cache_bytes(B, 1, s),
                    flops.bytes_moved(p, 1, P, s, batch_size=B))),
        (r"I = \frac{B \cdot F}{\text{bytes}}",
         lambda p: (B * flops.forward_flops(p, 1, P) / flops.bytes_moved(p, 1, P, s, batch_size=B),
                    flops.arithmetic_intensity(p, 1, P, s, batch_size=B))),
        (r"\text{time} \ge \max\left(\frac{F}{\pi}, \frac{\text{bytes}}{\beta}\right)",
         lambda p: (max(flops.forward_flops(p, 1, P) / 989e12, flops.bytes_moved(p, 1, P, s) / 3.35e12),
                    hardware.roofline_time(flops.forward_flops(p, 1, P), flops.bytes_moved(p, 1, P, s), 989e12,
                                           3.35e12))),
        (r"\text{FLOP/s} \le \min(\pi, \beta \cdot I)",
         lambda p: (min(989e12, 3.35e12 * 7.5), hardware.attainable_flops(7.5, 989e12, 3.35e12))),
        (r"I^* = \frac{\pi}{\beta}",
         lambda p: (989e12 / 3.35e12, hardware.ridge_point(989e12, 3.35e12))),
    ]


FORMULAS = _twin_checks()


# --- the rules, as one function that lists what is wrong with a page (the mutation test feeds it altered pages) ---

def _names() -> list[str]:
    """Names that contain digits and are not numbers: models, GPUs, dtypes (longest first: GPT-2 XL before GPT-2)."""
    names = [p.name for p in memory.MODEL_PRESETS.values()] + [g.name for g in hardware.GPU_PRESETS.values()]
    names += [g.name.removeprefix("NVIDIA ") for g in hardware.GPU_PRESETS.values()]
    names += list(memory.DTYPE_BYTES)
    return sorted(set(names), key=len, reverse=True)


def _row(example: str, value: str, code: str) -> str:
    return f"| {example} | {value} | `{code}` |"


def _products_hold(text: str) -> list[str]:
    """Every chain 'a · b · ... = c' of plain numbers on the page multiplies out."""
    wrong = []
    for chain in re.finditer(r"(?<![\w(/+−·-] )((?:\d[\d,]* · )+\d[\d,]*) = (\d[\d,]*)(?! *[/·])", text):
        product = 1
        for factor in chain.group(1).split(" · "):
            product *= int(factor.replace(",", ""))
        if product != int(chain.group(2).replace(",", "")):
            wrong.append(f"{chain.group(0)!r} does not multiply out ({product:,})")
    return wrong


def cheatsheet_problems(text: str) -> list[str]:
    """Everything that is wrong with the cheat-sheet's text; [] when every number on it checks out."""
    problems = []
    setup = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    if len(setup) != 1:
        return [f"expected one ```python set-up block, found {len(setup)}"]
    namespace = {}
    try:
        exec(setup[0], namespace)  # the page's own set-up: kvlab's modules and four presets
    except Exception as error:  # any error is a problem of the page
        return [f"the set-up block fails: {error!r}"]
    rest = text.replace(setup[0], "")
    for example, value, code in WORKED:
        try:
            result = eval(code, namespace)  # the page's kvlab expression, in its set-up's namespace
            row = _row(example.format_map(namespace), value(result, namespace), code)
        except Exception as error:  # a name the page misspelt, a preset that does not exist
            problems.append(f"{code}: {error!r}")
            continue
        if row not in rest.splitlines():
            problems.append(f"no row {row!r}")
        rest = rest.replace(row, "")
    problems += _products_hold(text)
    for formula, _ in FORMULAS:
        if f"$${formula}$$" not in rest:
            problems.append(f"formula missing: {formula}")
        rest = rest.replace(f"$${formula}$$", "")
    for math in re.findall(r"\$[^$\n]*\d[^$\n]*\$", rest):
        problems.append(f"a formula with a number that no test checks: {math}")
    for link in re.finditer(r"\[chapter (\d\d)\]\(\.\./notebooks/(\d\d)_\w+\.ipynb\)", rest):
        if link.group(1) != link.group(2):
            problems.append(f"link text and target disagree: {link.group(0)}")
    problems += [f"dead link {target}" for target in _dead_links(rest)]
    rest = re.sub(r"\[chapter (\d\d)\]\(\.\./notebooks/\1_\w+\.ipynb\)", "", rest)
    for name in _names():
        rest = rest.replace(name, "")
    problems += [f"a number no test checks: {line.strip()!r}" for line in rest.splitlines() if re.search(r"\d", line)]
    return problems


def _dead_links(text: str) -> list[str]:
    return [target for target in NOTEBOOK_LINK.findall(text) if not (DOCS / target).resolve().is_file()]


# --- the cheat-sheet ---

def test_every_number_on_the_cheatsheet_is_recomputed_with_kvlab():
    assert cheatsheet_problems(CHEATSHEET.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("formula, check", FORMULAS, ids=[f[0][:40] for f in FORMULAS])
@pytest.mark.parametrize("preset", list(memory.MODEL_PRESETS), ids=str)
def test_each_formula_on_the_cheatsheet_equals_kvlab(formula, check, preset):
    twin, reference = check(memory.get_preset(preset))
    assert twin == pytest.approx(reference, rel=1e-12), formula


def test_changing_any_number_on_the_cheatsheet_fails_the_check():
    """Each digit run of the page, raised by one in turn (inside words and code too), must break a rule."""
    text = CHEATSHEET.read_text(encoding="utf-8")
    runs = list(re.finditer(r"\d+", text))
    assert len(runs) > 100, "the page should carry its worked numbers"
    unnoticed = []
    for run in runs:
        changed = str(int(run.group()) + 1).zfill(len(run.group()))
        mutated = text[:run.start()] + changed + text[run.end():]
        if not cheatsheet_problems(mutated):
            line = text.count("\n", 0, run.start()) + 1
            unnoticed.append(f"line {line}: {run.group()} -> {changed}")
    assert not unnoticed, f"changes no check notices: {unnoticed}"


def test_the_products_check_catches_a_wrong_product():
    assert _products_hold("2 · 3 · 4 = 24 bytes") == []
    assert _products_hold("2 · 3 · 4 = 25 bytes")


# --- links, in every page of docs/ ---

@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_every_link_to_a_notebook_points_to_a_file(page):
    text = page.read_text(encoding="utf-8")
    assert not _dead_links(text), f"{page.name} links to missing files"


# --- the glossary ---

def _glossary_rows() -> list[list[str]]:
    rows = []
    for line in GLOSSARY.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 4 and not set(cells[0]) <= set("-: ") and cells[0] != "English":
            rows.append(cells)
    return rows


REQUIRED_TERMS = ["KV cache", "prefill", "decode", "token", "autoregressive", "attention", "query", "key", "value",
                  "causal mask", "throughput", "latency", "time to first token", "time per output token",
                  "memory-bound", "compute-bound", "arithmetic intensity", "roofline", "FLOPs", "bandwidth", "batch",
                  "static cache", "dynamic cache", "beam search", "GQA", "MQA", "MLA", "quantisation", "eviction",
                  "sliding window", "attention sink", "heavy hitters", "FastGen", "paged attention", "block",
                  "continuous batching", "chunked prefill", "preemption", "speculative decoding"]
CHINESE_FROM_THE_ISSUE = {"prefill": "预填充", "decode": "解码", "throughput": "吞吐量", "latency": "时延",
                          "memory-bound": "访存密集型", "compute-bound": "计算密集型"}


def test_the_glossary_has_every_required_term_with_its_chinese_name():
    rows = _glossary_rows()
    english = " ; ".join(row[0].lower() for row in rows)
    missing = [term for term in REQUIRED_TERMS if term.lower() not in english]
    assert not missing, f"glossary lacks {missing}"
    for term, chinese in CHINESE_FROM_THE_ISSUE.items():
        (row,) = [row for row in rows if row[0].lower().startswith(term.lower())]
        assert chinese in row[1], (term, row[1])
    assert all(re.search(r"[\u4e00-\u9fff]", row[1]) for row in rows), "every term has a Chinese name"


def test_each_glossary_term_links_to_a_chapter_that_uses_it():
    """The chapter column links to an existing notebook whose text contains the term under one of its English names
    (`dynamic cache (DynamicCache)`: either)."""
    unused = []
    for english, _, chapter, _ in _glossary_rows():
        target = NOTEBOOK_LINK.search(chapter)
        assert target, f"{english}: no chapter link in {chapter!r}"
        path = (DOCS / target.group(1)).resolve()
        assert path.is_file(), f"{english}: {target.group(1)} does not exist"
        names = [n.strip(" ()`").lower() for n in re.split(r" \(|, | / ", english) if n.strip(" ()`")]
        chapter_text = " ".join("".join(c["source"]) for c in notebook_cells(path)).lower()
        chapter_text = " ".join(chapter_text.replace("-\n", "-").split())
        if not any(name in chapter_text for name in names):
            unused.append(f"{path.name} never says any of {names}")
    assert not unused, unused


# --- the instructor's guide ---

QUOTED = {  # chapter -> numbers docs/instructor.md quotes, each printed by a code cell of that chapter
    "00_start_here": ["209,856"],
    "01_autoregressive_generation": ["76", "13"],
    "02_attention_h_to_hello": ["220", "55", "0.405"],
    "03_building_the_cache": ["16,644,096", "260,096", "64.0", "262,144", "20,480"],
    "04_cost_with_and_without_cache": ["13.3%", "2.7%", "6,702", "73,990", "315.8×"],
    "05_prefill_and_decode": ["0.479", "19,370", "2,196", "504×", "1.81×", "4.18 ms"],
    "06_kv_cache_memory": ["72.0 GiB", "77.3 GB", "0.221", "524,288", "23,446"],
    "07_hugging_face_cache_api": ["7,150", "121", "59x", "131,072"],
    "08_compressing_the_cache": ["45.3%", "55.3%", "31.1%", "2.7984", "0.2517"],
    "09_evicting_tokens": ["90.4%", "87.6%", "84.4%", "0.038", "95.0%", "98.4%"],
    "10_serving_many_requests": ["49.3%", "11.0%", "114", "154", "6.08", "31.75"],
    "11_a_real_model": ["28.10", "14.52", "15.96", "75", "19.277", "80.1%"],
}


def _number(text: str) -> re.Pattern:
    """`text` as a whole number: not part of a longer one (76 is not in 1,076 or 76.5)."""
    return re.compile(rf"(?<!\d)(?<!\d[.,]){re.escape(text)}(?!\d|[.,]\d)")


@pytest.mark.parametrize("chapter", sorted(QUOTED))
def test_the_instructor_quotes_numbers_the_chapter_prints(chapter):
    """A number the guide's section on a chapter quotes is printed by one of that chapter's committed outputs."""
    printed = "".join(printed_text(c) for c in notebook_cells(ROOT / "notebooks" / f"{chapter}.ipynb")
                      if c["cell_type"] == "code")
    guide = INSTRUCTOR.read_text(encoding="utf-8")
    section = guide.split(f"\n### [{chapter[:2]} · ", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    assert f"](../notebooks/{chapter}.ipynb)" in section.splitlines()[0], "the section's heading links the chapter"
    section = " ".join(section.split())  # a number the prose wraps ("72.0\nGiB") is still one quote
    for number in QUOTED[chapter]:
        assert _number(number).search(section), f"the guide's section on {chapter} no longer quotes {number}"
        assert _number(number).search(printed), f"{chapter} does not print {number}"


def test_the_walkthrough_minutes_follow_the_reading_minutes():
    """Walkthrough = twice the README's reading minutes (read aloud, cells run live) + 5 for the questions."""
    guide = INSTRUCTOR.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| \[(\d\d)[^\]]*\]\([^)]*\) \| \d+ \| (\d+) \|", guide, re.MULTILINE))
    chapters = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert rows == {nb.name[:2]: str(2 * chapter_minutes(nb) + 5) for nb in chapters}
    readme_rows = dict(re.findall(r"^\| \[(\d\d)[^\]]*\]\([^)]*\) \| (\d+) \|", guide, re.MULTILINE))
    assert readme_rows == {nb.name[:2]: str(chapter_minutes(nb)) for nb in chapters}
    assert f"In all, {sum(map(int, rows.values()))} minutes of walkthrough" in guide

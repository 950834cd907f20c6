"""Chapter 09 · evicting tokens: quality against budget, bytes held per step, memory against quality (eviction
next to chapter 08's quantised caches), and the policy FastGen chose for each head."""

from __future__ import annotations

from ..checks import check_int, check_one_of
from . import _checks
from ._style import TEXT_PT, axes, legend

_QUALITY_METRICS = {
    "cross_entropy": "held-out cross-entropy (nats per token)",
    "top1_agreement": "top-1 agreement with the full cache (%)",
}


def plot_quality_vs_budget(budgets, reports_by_label: dict, metric: str = "cross_entropy", ax=None,
                           title: str | None = None):
    """Quality of eviction caches against the tokens they may keep: one line per strategy.

    `reports_by_label` maps a strategy's name to one `kvlab.quality.QualityReport` per budget in `budgets`. With
    ``metric="cross_entropy"`` the full cache's cross-entropy is drawn as a dashed line: the floor every strategy
    approaches as its budget grows.
    """
    check_one_of("metric", metric, _QUALITY_METRICS)
    budgets = _checks.check_values("budgets", budgets, minimum=1, inclusive=True, integer=True)
    reports_by_label = _checks.check_entries("reports_by_label", reports_by_label,
                                             "{label: [QualityReport per budget]}")
    for label, reports in reports_by_label.items():
        if len(reports) != len(budgets):
            raise ValueError(f"reports_by_label[{label!r}] must hold one report per budget: {len(budgets)} "
                             f"expected, got {len(reports)}")
    scale = 100 if metric == "top1_agreement" else 1
    fig, ax = axes(ax)
    for label, reports in reports_by_label.items():
        ax.plot(budgets, [getattr(r, metric) * scale for r in reports], "o-", label=label)
    if metric == "cross_entropy":
        full = next(iter(reports_by_label.values()))[0].full_cross_entropy
        ax.axhline(full, color="black", linestyle="--", label=f"full cache ({full:.3f})")
        ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("tokens kept per layer and head (budget)")
    ax.set_ylabel(_QUALITY_METRICS[metric])
    ax.set_title(title or "Quality against the number of tokens kept")
    legend(ax)
    return fig


def plot_bytes_per_step(bytes_by_label: dict, first: int = 1, ax=None, title: str | None = None):
    """Bytes a cache holds after each model call of a generation: a full cache grows, an evicting one levels off.

    `bytes_by_label` maps a cache's name to its ``nbytes`` after each call (`kvlab.quality.generate_with_memory`);
    the first call has fed `first` tokens (the prompt), each later one one more, which is the x axis.
    """
    bytes_by_label = _checks.check_entries("bytes_by_label", bytes_by_label, "{label: [bytes after each step]}")
    bytes_by_label = {label: _checks.check_values(f"bytes_by_label[{label!r}]", counts, inclusive=True, integer=True)
                      for label, counts in bytes_by_label.items()}
    first = check_int("first", first, 1)
    fig, ax = axes(ax)
    for i, (label, counts) in enumerate(bytes_by_label.items()):
        # caches with the same budget hold the same bytes: a line style each keeps every line visible on top of
        # the others (the thinner, later ones drawn over the wider, earlier ones)
        ax.plot(range(first, first + len(counts)), [v / 1024 for v in counts], label=label,
                linestyle=_LINE_STYLES[i % len(_LINE_STYLES)], linewidth=max(4.0 - i, 1.5))
    for group in _identical_groups(bytes_by_label):  # say so where lines coincide, rather than hide one
        counts = bytes_by_label[group[0]]
        ax.annotate("\n".join([f"{len(group)} lines coincide:", *group, "keep as many tokens, so as many bytes"]),
                    (first + len(counts) - 1, counts[-1] / 1024), xytext=(-10, 25), textcoords="offset points",
                    ha="right", va="bottom", fontsize=TEXT_PT, arrowprops=dict(arrowstyle="->", color="0.3"))
    ax.set_xlabel("tokens seen by the cache")
    ax.set_ylabel("bytes held by the cache (KiB)")
    ax.set_ylim(0, None)
    ax.set_title(title or "Memory held during generation")
    legend(ax)
    return fig


_LINE_STYLES = ("-", "--", "-.", ":")
_MARKERS = "osD^v"


def _identical_groups(values_by_label: dict) -> list[list[str]]:
    """Labels whose values are equal, in groups of two or more: lines drawn exactly on top of each other."""
    groups: dict[tuple, list[str]] = {}
    for label, values in values_by_label.items():
        groups.setdefault(tuple(values), []).append(label)
    return [labels for labels in groups.values() if len(labels) > 1]


def plot_memory_vs_quality(series: dict, ax=None, title: str | None = None):
    """Caches as points: bytes held (share of the full cache) against cross-entropy lost; down and left is better.

    `series` maps a family's name (one colour and legend entry) to a list of ``(label, QualityReport)`` pairs;
    each point is annotated with its label unless the label is empty. The y axis is symmetric-log, linear below
    0.001 nats, so that losses of 0.001 and of 1 nat both show.
    """
    from ..quality import QualityReport

    series = _checks.check_entries("series", series, "{family: [(label, QualityReport), ...]}")
    for name, points in series.items():
        series[name] = points = list(points)
        if not points:
            raise ValueError(f"series[{name!r}] must hold at least one (label, QualityReport) pair, got none")
        for pair in points:
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], QualityReport)):
                raise TypeError(f"series[{name!r}] must hold (label, kvlab.quality.QualityReport) pairs, got {pair!r}")
    fig, ax = axes(ax, figsize=(7.2, 4.4))
    highest = 1e-3
    for j, (name, points) in enumerate(series.items()):
        xs = [report.memory_ratio * 100 for _, report in points]
        ys = [report.cross_entropy_increase for _, report in points]
        # a marker shape per family, hollow after the first: points of two families at one place both stay visible
        (line,) = ax.plot(xs, ys, _MARKERS[j % len(_MARKERS)], label=name, markersize=7, mfc="none" if j else None)
        highest = max(highest, *ys)
        for i, ((label, _), x, y) in enumerate(zip(points, xs, ys)):
            if label:  # alternately above and below the point, so that neighbours' labels do not collide
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 3 if i % 2 == 0 else -11),
                            fontsize=TEXT_PT, color=line.get_color())
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(-1e-3, 3 * highest)
    ax.set_xlim(0, 105)
    ax.set_xlabel("bytes held, % of the full fp32 cache")
    ax.set_ylabel("cross-entropy increase (nats per token)")
    ax.set_title(title or "Memory saved against quality lost")
    legend(ax, loc="upper right")
    return fig


_POLICY_SHORT = {"special": "S", "special+punct": "S+P", "special+punct+frequent": "S+P+F",
                 "special+punct+frequent+local": "S+P+F+L", "full": "full"}


def plot_policy_grid(policies, held=None, ax=None, title: str | None = None):
    """FastGen's choice per head (`kvlab.fastgen.FastGenCache.policies`): a coloured (n_layer, n_kv_head) table.

    A colour per policy, from the cheapest (special tokens only) to the full cache, so that a glance shows how many
    heads could be compressed and how far. Each cell is labelled with the policy's initials (S special, P
    punctuation, F frequent, L local), and with `held` (the same grid of tokens held, `FastGenCache.held`) its count.
    A deep model (more than 8 layers, SmolLM2 has 30) is drawn with the layers across, so the table stays a page
    wide; its cells are then coloured, not labelled (30 columns leave no room for 10-pt text).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = list(_POLICY_SHORT)
    rows = _grid("policies", policies)
    for i, row in enumerate(rows):
        for j, name in enumerate(row):
            if name not in _POLICY_SHORT:
                raise ValueError(f"policies[{i}][{j}] must be one of {names}, got {name!r}")
    counts = None
    if held is not None:
        counts = _grid("held", held)
        if [len(row) for row in counts] != [len(row) for row in rows]:
            raise ValueError(f"held must have the shape of policies ({len(rows)} x {len(rows[0])})")
        counts = [_checks.check_values(f"held[{i}]", row, inclusive=True, integer=True) for i, row in enumerate(counts)]
    colours = ["#c6dbef", "#9ecae1", "#6baed6", "#3182bd", "#fd8d3c"]  # blues for compressed, orange for full
    across = len(rows) > 8  # layers along x: (n_kv_head, n_layer) on screen
    shown = [list(column) for column in zip(*rows)] if across else rows
    size = (9.6, 2.4 + 0.5 * len(shown)) if across else (6.4, 2.0 + 0.6 * len(rows))
    fig, ax = axes(ax, figsize=size)
    ax.imshow([[names.index(name) for name in row] for row in shown], cmap=ListedColormap(colours), vmin=-0.5,
              vmax=len(names) - 0.5, aspect="auto")
    for i, row in enumerate([] if across else rows):  # too many cells across for 10-pt labels: colours only
        for j, name in enumerate(row):
            label = _POLICY_SHORT[name] + (f"\n{counts[i][j]} token{'s' * (counts[i][j] != 1)}" if counts else "")
            ax.text(j, i, label, ha="center", va="center", fontsize=TEXT_PT)
    ax.set_xticks(range(len(shown[0])), [str(j) for j in range(len(shown[0]))])
    ax.set_yticks(range(len(shown)), [str(i) for i in range(len(shown))])
    ax.set_xlabel("layer" if across else "K/V head")
    ax.set_ylabel("K/V head" if across else "layer")
    handles = [Patch(color=colour, label=name if name == "full" else f"{_POLICY_SHORT[name]}: {name}")
               for name, colour in zip(names, colours)]
    legend(ax, handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax.set_title(title or "The policy FastGen chose for each head")
    return fig


def _grid(name: str, given) -> list[list]:
    """A non-empty rectangular table (a list of equally long rows), as lists."""
    try:
        rows = [list(row) for row in given]
    except TypeError:
        raise TypeError(f"{name} must be a table: a list of rows (one per layer), got {type(given).__name__}") from None
    if not rows or not rows[0] or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError(f"{name} must be a table with at least one row, every row as long as the first, got {given!r}")
    return rows

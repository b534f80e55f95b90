"""Charts as inline SVG (matplotlib, no pyplot state, text left as text): the report opens
offline and its labels are in the page, so a browser renders them in its own fonts (Chinese
included) and a test can find them in the DOM. The title goes to the SVG's aria-label; the page
shows it as the figure's caption.

A missing value is left out of the chart; a suppressed one is marked with '*' on the axis.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from collections.abc import Sequence

SUPPRESSED_MARK = "*"
_COLOURS = ["#1f5fa8", "#e07b24", "#2a9d5c", "#b8325f", "#7b5ea7", "#8c6d31", "#17a2b8",
            "#6c757d"]
_STYLE = {
    "svg.fonttype": "none",  # text stays <text>: the browser's fonts, findable in the DOM
    "svg.hashsalt": "healthlake",  # stable ids: the same data gives the same SVG
    "font.family": ["sans-serif"],
    "font.sans-serif": ["WenQuanYi Micro Hei", "Noto Sans CJK SC", "Source Han Sans SC",
                        "Microsoft YaHei", "PingFang SC", "DejaVu Sans"],
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "grid.color": "#dddddd",
}


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _svg(fig, title: str) -> str:
    buf = io.StringIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Gg]lyph.*")  # a machine without CJK fonts
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # no XML prolog or DOCTYPE inside HTML
    label = title.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return re.sub(r"<svg ", f'<svg role="img" aria-label="{label}" class="chart-svg" ', svg,
                  count=1)


def _figure(width: float = 6.4, height: float = 3.4):
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams.update(_STYLE)
    return Figure(figsize=(width, height))


def bar_chart(categories: Sequence[str], series: dict[str, Sequence[float | None]], title: str,
              ylabel: str, suppressed: dict[str, Sequence[bool]] | None = None) -> str:
    """Grouped vertical bars: one group per category, one bar per series. ``suppressed`` says
    which missing bars to mark '*' (default: every missing bar)."""
    fig = _figure(6.4, 3.4 if len(categories) <= 6 else 4.0)
    ax = fig.add_subplot()
    from matplotlib.patches import Patch

    n = max(len(series), 1)
    width = 0.8 / n
    handles, top = [], 0.0
    for i, (name, values) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(categories))]
        shown = [(x, v) for x, v in zip(xs, values, strict=True) if not _missing(v)]
        ax.bar([x for x, _ in shown], [v for _, v in shown], width=width * 0.95, color=colour)
        handles.append(Patch(color=colour, label=name))
        top = max([top, *(v for _, v in shown)])
        marks = (suppressed or {}).get(name) or [_missing(v) for v in values]
        for x, v, mark in zip(xs, values, marks, strict=True):
            if _missing(v) and mark:
                ax.text(x, 0, SUPPRESSED_MARK, ha="center", va="bottom", color="#555555")
    ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories, rotation=30 if len(categories) > 5 else 0,
                       ha="right" if len(categories) > 5 else "center")
    ax.set_ylabel(ylabel)
    if len(series) > 1:
        ax.legend(handles=handles, fontsize=8, frameon=False, ncols=min(len(series), 4),
                  loc="upper left", bbox_to_anchor=(0, -0.18 if len(categories) <= 5 else -0.3))
    return _svg(fig, title)


def line_chart(xs: Sequence[str], series: dict[str, Sequence[float | None]], title: str,
               ylabel: str) -> str:
    """One line (with markers) per series over ordered categories (years, age bands); a
    missing value breaks its line."""
    fig = _figure()
    ax = fig.add_subplot()
    positions = list(range(len(xs)))
    shown: list[float] = []
    for i, (name, values) in enumerate(series.items()):
        ys = [float("nan") if _missing(v) else v for v in values]
        ax.plot(positions, ys, marker="o", markersize=4, label=name,
                color=_COLOURS[i % len(_COLOURS)])
        shown += [v for v in ys if not math.isnan(v)]
    if not shown or min(shown) >= 0 and max(shown) == 0:
        ax.set_ylim(0, 1.0)  # nothing, or only zeros: no negative axis
    ax.set_xticks(positions)
    ax.set_xticklabels(xs, rotation=30 if len(xs) > 8 else 0)
    ax.set_xlim(-0.5, len(xs) - 0.5)
    ax.set_ylabel(ylabel)
    if series:
        ax.legend(fontsize=8, frameon=False, ncols=min(len(series), 3), loc="upper left",
                  bbox_to_anchor=(0, -0.15 if len(xs) <= 8 else -0.25))
    return _svg(fig, title)

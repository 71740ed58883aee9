"""The chart of `t2 report`: one panel per column (each category, the question-weighted average, the mean
of categories), one horizontal bar per system with its 95 % CI whisker, the base row's value as a dashed
line; readable with a dozen systems (matplotlib, Agg backend; the optional `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError


def whiskers(acc: float, ci: list[float] | None) -> tuple[float, float]:
    """(below, above) the point in percentage points; a Wilson bound at 0 % or 100 % can miss the point by
    a rounding error, so each is clamped at 0 (matplotlib refuses a negative error and the chart is lost)."""
    if not ci:
        return 0.0, 0.0
    return max(0.0, 100 * (acc - ci[0])), max(0.0, 100 * (ci[1] - acc))


def bar_chart(comp: Any, path: Path) -> Path:
    """Write the chart of a Comparison as PNG (atomically)."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the chart needs matplotlib: pip install 'transformer-squared[plot]' (or --no-chart)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_path
    from .comparison import AVERAGE, MEAN

    groups = [*comp.categories, AVERAGE, MEAN]
    rows, h = comp.rows, comp.header
    colors = plt.get_cmap("tab20").colors
    ys = list(range(len(rows)))
    fig, axes = plt.subplots(1, len(groups), sharey=True, squeeze=False, dpi=120,
                             figsize=(2.3 * len(groups) + 2.2, 0.3 * len(rows) + 1.6))
    for ax, col in zip(axes[0], groups):
        for y, row in zip(ys, rows):
            acc, ci = row.cells[col]
            if acc is None:
                continue
            lo, hi = whiskers(acc, ci)
            ax.barh(y, 100 * acc, 0.75, xerr=[[lo], [hi]], color=colors[y % len(colors)], capsize=2,
                    hatch="//" if row.reference else None, edgecolor="black", linewidth=0.4,
                    error_kw={"elinewidth": 0.8})
        base = next((r.cells[col][0] for r in rows if r.label == h["base"] and r.cells[col][0] is not None), None)
        if base is not None:
            ax.axvline(100 * base, color="black", linestyle="--", linewidth=0.7)
        ax.set_title(col, fontsize=9)
        ax.set_xlim(0, 100)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0][0].set_yticks(ys, [r.label for r in rows], fontsize=8)
    axes[0][0].invert_yaxis()  # first row on top, as in the table
    fig.supxlabel(f"accuracy (%); whiskers: 95 % CI; dashed: {h['base']}; hatched: reference rows", fontsize=8)
    fig.suptitle(f"{h['task']} · {h['split']} · {', '.join(h['models'])} · protocol {h['protocol']} · "
                 f"n = {max((r.n for r in rows), default=0)}", fontsize=9)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)

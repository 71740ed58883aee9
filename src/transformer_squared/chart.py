"""The bar chart of `t2 report`: accuracy per category, question-weighted average and mean of categories,
one bar per system, 95 % CI whiskers (matplotlib, Agg backend; the optional `plot` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError


def bar_chart(comp: Any, path: Path) -> Path:
    """Write the grouped bar chart of a Comparison as PNG (atomically)."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the chart needs matplotlib: pip install 'transformer-squared[plot]' (or --no-chart)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .atomic import atomic_path
    from .comparison import AVERAGE, MEAN

    groups = [*comp.categories, AVERAGE, MEAN]
    n_rows = len(comp.rows)
    width = 0.8 / max(1, n_rows)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.2 * len(groups) + 0.35 * n_rows * len(groups)), 4.8), dpi=120)
    for i, row in enumerate(comp.rows):
        xs, ys, lo, hi = [], [], [], []
        for g, col in enumerate(groups):
            acc, ci = row.cells[col]
            if acc is None:
                continue
            xs.append(g - 0.4 + width * (i + 0.5))
            ys.append(100 * acc)
            # max(0, ·): a Wilson bound at 0 % or 100 % can miss the point by a rounding error (matplotlib refuses < 0)
            lo.append(max(0.0, 100 * (acc - ci[0])) if ci else 0.0)
            hi.append(max(0.0, 100 * (ci[1] - acc)) if ci else 0.0)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=row.label, hatch="//" if row.reference else None,
               edgecolor="black", linewidth=0.4, error_kw={"elinewidth": 0.8})
    h = comp.header
    ax.set_xticks(range(len(groups)), [g.replace(" of ", " of\n") for g in groups])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{h['task']} · {h['split']} · {', '.join(h['models'])}\nprotocol {h['protocol']}; "
                 f"n = {max((r.n for r in comp.rows), default=0)}; whiskers: 95 % CI", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)

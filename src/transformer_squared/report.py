"""Tables from results files: a rich table for the terminal and Markdown for READMEs (eval results)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _ci(ci: list[float] | None) -> str:
    return "—" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def eval_rows(results: dict[str, Any]) -> list[list[str]]:
    """One row per category, then the weighted average and the category mean:
    name, n, and accuracy (%) with its 95 % CI per protocol."""
    protocols = results["protocol"]
    first = results["metrics"][protocols[0]]
    rows = []
    for cat in first["categories"]:
        row = [cat, str(first["categories"][cat]["n"])]
        for p in protocols:
            m = results["metrics"][p]["categories"][cat]
            row += [_pct(m["accuracy"]), _ci(m["ci95"])]
        rows.append(row)
    avg = ["Average (weighted)", str(first["n"])]
    mean = ["Mean of categories", ""]
    for p in protocols:
        m = results["metrics"][p]
        avg += [_pct(m["weighted_average"]), _ci(m["ci95"])]
        mean += [_pct(m["category_mean"]), _ci(m["category_mean_ci95"])]
    return rows + [avg, mean]


def _header(results: dict[str, Any]) -> list[str]:
    head = ["Category", "n"]
    for p in results["protocol"]:
        head += [f"{p} %", "95% CI"]
    return head


def _title(results: dict[str, Any]) -> str:
    experts = ", ".join(e["label"] or "?" for e in results["experts"]) or "base"
    t = results["task"]
    return f"{t['name']} {t['split']} · {results['model']} · {experts}"


def eval_table(results: dict[str, Any]) -> Table:
    """The per-category table of one results dict, for rich to print."""
    table = Table(title=_title(results))
    for i, h in enumerate(_header(results)):
        table.add_column(h, justify="left" if i == 0 else "right")
    rows = eval_rows(results)
    for i, row in enumerate(rows):
        table.add_row(*row, end_section=i == len(rows) - 3)
    return table


def eval_markdown(results: dict[str, Any]) -> str:
    """The same table in Markdown."""
    head = _header(results)
    lines = [f"**{_title(results)}**", "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in eval_rows(results)]
    return "\n".join(lines) + "\n"


def routing_lines(results: dict[str, Any]) -> list[str]:
    """Pass-1 summary of a two-pass results dict: decisions, routing accuracy, time of each pass ([] without)."""
    r = results.get("routing")
    if not r:
        return []
    t = results["timing"]
    lines = [f"routing ({results['strategy']['name']}): " + ", ".join(f"{k} {v}" for k, v in r["decisions"].items())]
    acc = r["accuracy"]
    if acc:
        lines.append(f"routing accuracy {_pct(acc['accuracy'])} % {_ci(acc['ci95'])} (n = {acc['n']})")
    frac = t["pass1_fraction_of_pass2"]
    lines.append(f"pass 1 {t['pass1_seconds']:.2f} s, pass 2 {t['pass2_seconds']:.2f} s"
                 + ("" if frac is None else f" (pass 1 = {100 * frac:.1f} % of pass 2)"))
    return lines


def confusion_table(results: dict[str, Any]) -> Table | None:
    """True category (rows) against routing decision (columns), or None without categories."""
    conf = (results.get("routing") or {}).get("confusion")
    if not conf:
        return None
    cols = sorted({d for row in conf.values() for d in row})
    table = Table(title="routing: true category × decision")
    table.add_column("category")
    for c in cols:
        table.add_column(c, justify="right")
    for cat, row in conf.items():
        table.add_row(cat, *[str(row.get(c, 0)) for c in cols])
    return table

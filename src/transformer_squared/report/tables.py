"""Tables from results files: a rich table for the terminal and Markdown for READMEs.

`eval_*`: one results file by category (`t2 eval`). `comparison_*` and `write_report`: the
comparison of several systems (`t2 report`; the numbers come from `comparison.py`, the chart from
`chart.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ..evaluation.metrics import CATEGORY_MEAN_CI, MIXTURE, SIGNIFICANCE_RULE


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
    bias = r.get("position_bias")
    if bias and bias["n"]:
        lines.append(f"position bias over {bias['orders']} cyclic orders (n = {bias['n']}): decision follows the expert "
                     f"{_pct(bias['follows_expert'])} %, the place {_pct(bias['follows_position'])} %; decisions by place "
                     + " / ".join(_pct(x) for x in bias["share_by_position"]) + f" % (measuring took "
                     f"{bias['seconds']:.2f} s of pass 1)")
    frac = t["pass1_fraction_of_pass2"]
    lines.append(f"pass 1 {t['pass1_seconds']:.2f} s, pass 2 {t['pass2_seconds']:.2f} s"
                 + ("" if frac is None else f" (pass 1 = {100 * frac:.1f} % of pass 2)"))
    return lines


def _confusion(conf: dict[str, dict[str, int]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a confusion dict: true category (rows) against decision (columns), counts."""
    cols = sorted({d for row in conf.values() for d in row})
    return ["category", *cols], [[cat, *(str(row.get(c, 0)) for c in cols)] for cat, row in conf.items()]


def _rich_table(head: list[str], lines: list[list[str]], title: str | None = None) -> Table:
    table = Table(title=title)
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i == 0 else "right")
    for line in lines:
        table.add_row(*line)
    return table


def confusion_table(results: dict[str, Any]) -> Table | None:
    """True category (rows) against routing decision (columns), or None without categories."""
    conf = (results.get("routing") or {}).get("confusion")
    return _rich_table(*_confusion(conf), title="routing: true category × decision") if conf else None


# ---- the comparison table of `t2 report` ---------------------------------------------------------
REFERENCE_TEXT = ("*best constant (X)* answers every question with X, the letter most often correct in the training "
                  "part: the score of always answering X only (a model stuck on another letter scores that letter's "
                  "share of the answers instead)")
PROTOCOL_TEXT = {"letter": "letter: argmax of the next-token logits over the option letters",
                 "generate": "generate: one greedy token read as the letter (VMLU's official reading)"}


def _cell(acc: float | None, ci: list[float] | None) -> str:
    return "—" if acc is None else f"{100 * acc:.1f} {_ci(ci)}"


def _name(row: Any) -> str:
    return f"*{row.label}*" if row.reference else row.label


def comparison_rows(comp: Any) -> tuple[list[str], list[list[str]]]:
    """Header and one line per row of the main table: accuracy % [95 % CI] per column, n, letter entropy."""
    from .comparison import AVERAGE, MEAN

    cols = [*comp.categories, AVERAGE, MEAN]
    head = ["system", *cols, "n", "entropy (bits)"]
    lines = [[_name(r), *(_cell(*r.cells[c]) for c in cols), str(r.n),
              f"{r.entropy:.2f} [{r.entropy_ci[0]:.2f}, {r.entropy_ci[1]:.2f}]"] for r in comp.rows]
    return head, lines


def _md_table(head: list[str], lines: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
            *("| " + " | ".join(x) + " |" for x in lines)]


def _letters_table(comp: Any) -> list[str]:
    letters = sorted({x for r in comp.rows for x in r.letters}, key=lambda x: (x == "", x))
    head = ["system", *(x or "none" for x in letters)]
    lines = [[_name(r), *(f"{100 * r.letters.get(x, 0) / r.n:.1f}" if r.n else "—" for x in letters)]
             for r in comp.rows]
    return _md_table(head, lines)


def _paired_table(comp: Any, base: str) -> list[str]:
    head = ["system", "n", f"{base} %", "system %", "difference [95 % CI]", f"only {base} right",
            "only system right", "McNemar p"]
    lines = [[f"*{p['label']}*" if p["reference"] else p["label"], str(p["n"]), f"{100 * p['acc_base']:.1f}",
              f"{100 * p['acc_other']:.1f}",
              f"{'**' if p['significant'] else ''}{100 * p['diff']:+.1f} [{100 * p['ci95'][0]:+.1f}, "
              f"{100 * p['ci95'][1]:+.1f}]{'**' if p['significant'] else ''}",
              str(p["base_only_right"]), str(p["other_only_right"]), f"{p['mcnemar_p']:.3g}"] for p in comp.paired]
    return _md_table(head, lines)


def _quotes(comp: Any) -> list[str]:
    from .comparison import AVERAGE

    out: list[str] = []
    for q in comp.quotes:
        cols = [*comp.categories, AVERAGE]
        lines = [[label, *(f"{v[c]:.2f}" if c in v else "—" for c in cols)] for label, v in q["rows"]]
        out += ["", f"**Quoted, not measured here** (`--quote {q['name']}`): {q['source']}. {q['note']}", "",
                *_md_table(["published row", *cols], lines)]
    return out


def comparison_markdown(comp: Any, base: str = "base") -> str:
    """The report: title naming model, split, protocol and dates; main table; letters; paired differences; quotes."""
    h = comp.header
    dates = " to ".join(dict.fromkeys(h["dates"])) or "unknown date"
    lines = [f"**{h['task']} · {h['split']} · {', '.join(h['models']) or '—'}**", "",
             f"Protocol {PROTOCOL_TEXT.get(h['protocol'], h['protocol'])}. Measured {dates}"
             + (f" (git {', '.join(x[:10] for x in h['git'])})" if h["git"] else "") + ". Cells: accuracy % "
             f"[95 % CI] (Wilson; mean of categories: {CATEGORY_MEAN_CI}); entropy of the predicted letters with a "
             f"bootstrap CI ({h['n_boot']:,} resamples). Rows in italics are references, not trained systems"
             + (f"; {REFERENCE_TEXT}" if any(r.reference for r in comp.rows) else "") + ".", "",
             *_md_table(*comparison_rows(comp)), "", "Predicted letters (% of the row's answers):", "", *_letters_table(comp)]
    if comp.paired:
        lines += ["", f"Paired differences against {base} on the questions both answered (percentage points; "
                  f"bootstrap 95 % CI; McNemar's exact test; bold = {SIGNIFICANCE_RULE}):", "", *_paired_table(comp, base)]
    lines += _quotes(comp)
    if comp.routing:
        lines += pass1_markdown(comp, base)
    return "\n".join(lines) + "\n"


# ---- what pass 1 decided (the recipe's last screen) -----------------------------------------------
PASS1_TITLE = "What pass 1 decided"


def _routing_accuracy(r: dict[str, Any]) -> str:
    acc = r["accuracy"]
    if not acc:
        why = "every question got a mixture" if set(r["decisions"]) == {MIXTURE} else "no question of an expert's category"
        return f"{r['label']}: routing accuracy — ({why}, n = {r['n']})"
    return (f"{r['label']}: routing accuracy {_pct(acc['accuracy'])} % {_ci(acc['ci95'])} "
            f"({acc['n_correct']} of n = {acc['n']} questions of an expert's category routed to it)")


def verdict_line(comp: Any, base: str = "base") -> str:
    """One line from the paired differences against `base`: the systems (references left out) whose difference
    is significant by `SIGNIFICANCE_RULE`, or that none is, on how many questions."""
    systems = [p for p in comp.paired if not p["reference"]]
    if not systems:
        return f"No system shares questions with {base}: nothing to compare."
    ns = sorted({p["n"] for p in systems})
    on = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    differ = [p for p in systems if p["significant"]]
    if not differ:
        return f"No system differs from {base} beyond its CI on these {on} questions ({SIGNIFICANCE_RULE})."
    return (f"Differ from {base} beyond their CI ({SIGNIFICANCE_RULE}): "
            + "; ".join(f"{p['label']} {100 * p['diff']:+.1f} points [{100 * p['ci95'][0]:+.1f}, "
                        f"{100 * p['ci95'][1]:+.1f}] (n = {p['n']})" for p in differ) + ".")


def pass1_markdown(comp: Any, base: str = "base") -> list[str]:
    """The section: per two-pass row its routing accuracy and confusion table, then `verdict_line`."""
    lines = ["", f"### {PASS1_TITLE}", ""]
    for r in comp.routing:
        lines += [_routing_accuracy(r), ""]
        if r["confusion"]:
            lines += [*_md_table(*_confusion(r["confusion"])), ""]
    return lines + [verdict_line(comp, base)]


def pass1_screen(comp: Any, base: str = "base") -> list[Any]:
    """The same section for rich to print: texts (no markup read in labels) and tables, in order."""
    out: list[Any] = [Text(f"\n{PASS1_TITLE}", style="bold")]
    for r in comp.routing:
        out.append(Text(_routing_accuracy(r)))
        if r["confusion"]:
            out.append(_rich_table(*_confusion(r["confusion"]), title=f"{r['label']}: true category × decision"))
    return out + [Text(verdict_line(comp, base))]


class Fitted:
    """A table rich prints in full where the console is wide enough for it, else in its compact form."""

    def __init__(self, full: Table, compact: Table):
        self.full, self.compact = full, compact

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        natural = Measurement.get(console, options.update_width(10_000), self.full).maximum
        yield self.full if natural <= options.max_width else self.compact


def _compact_table(comp: Any, title: str) -> Table:
    """Accuracy % and n only, for a narrow terminal: the 95 % CIs stay in report.md."""
    from .comparison import AVERAGE, MEAN

    cols = [*comp.categories, AVERAGE, MEAN]
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                  caption=f"accuracy %; avg: weighted {AVERAGE.lower()}; mean: {MEAN.lower()}; CIs: report.md")
    table.add_column("system", no_wrap=True)  # a row never wraps; a long category name wraps in its header
    for c in cols:
        table.add_column({AVERAGE: "avg", MEAN: "mean"}.get(c, c), justify="right")
    table.add_column("n", justify="right")
    for r in comp.rows:
        table.add_row(r.label, *(_pct(r.cells[c][0]) for c in cols), str(r.n))
    return table


def comparison_table(comp: Any) -> Fitted:
    """The main table for rich to print on the terminal: with CIs and letter entropy where they fit on one line per
    row, else accuracy and n only (an 80-column terminal wrapped each cell of the full table over three lines)."""
    head, lines = comparison_rows(comp)
    h = comp.header
    title = f"{h['task']} · {h['split']} · {', '.join(h['models'])} · protocol {h['protocol']}"
    table = Table(title=title)
    for i, x in enumerate(head):
        table.add_column(x, justify="left" if i == 0 else "right")
    for line in lines:
        table.add_row(*(x.strip("*") for x in line))
    return Fitted(table, _compact_table(comp, title))


def write_report(named: list[tuple[str, dict[str, Any]]], out_dir: Path, protocol: str = "letter", base: str = "base",
                 quote: str | None = None, chart: bool = True, n_boot: int = 10_000) -> Any:
    """report.md, report.json and (with `chart`) chart.png in `out_dir`; returns the Comparison."""
    from ..atomic import write_json, write_text
    from .comparison import compare, to_json

    comp = compare(named, protocol, base, quote, n_boot)
    out_dir = Path(out_dir)
    write_text(comparison_markdown(comp, base), out_dir / "report.md")
    write_json(to_json(comp), out_dir / "report.json")
    if chart:
        from .chart import bar_chart

        bar_chart(comp, out_dir / "chart.png")
    return comp

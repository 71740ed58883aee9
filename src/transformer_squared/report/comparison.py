"""The numbers behind `t2 report`: one row per system from results files, with 95 % CIs, the
distribution of predicted letters and paired differences against the base model.

Every number is recomputed from the per-question predictions in the results files, never copied
from their stored summaries. Per row: accuracy per category, question-weighted average (VMLU's
"Average") and mean of categories with their intervals (`metrics.accuracy_metrics`), n, and the
entropy (bits) of the predicted letters with a bootstrap CI. Rows that share questions with the
base row get the paired difference (bootstrap CI) and McNemar's exact p. Rows of a two-pass system
(a Transformer² strategy) also get what pass 1 decided: routing accuracy and the confusion of true
category × decision (`metrics.routing_metrics`). `QUOTES` holds published numbers shown as separately
marked rows, never mixed with measured ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..evaluation.metrics import accuracy_metrics, entropy_bits, paired_stats, routing_metrics

AVERAGE, MEAN = "Average", "Mean of categories"
NO_ANSWER = ""  # the prediction when no letter could be read

QUOTES: dict[str, dict[str, Any]] = {
    "seed": {
        "source": "tuyentn/self-adaptive-llm, README.md at commit 3a6f1d3 (2025-04-04)",
        "note": ("Meta-Llama-3-8B-Instruct (the model of its notebook and submission files) on the VMLU test set, "
                 "as scored by vmlu.ai from submission CSVs; its LoRA (lora_vmlu.ipynb) was trained on VMLU valid "
                 "with a chat-template prompt. Published numbers, not measured here."),
        "rows": [
            ("base (quoted)", {"STEM": 41.30, "Social Science": 49.86, "Humanities": 49.31, "Other": 46.16,
                               AVERAGE: 46.02}),
            ("LoRA (quoted)", {"STEM": 45.41, "Social Science": 55.66, "Humanities": 53.00, "Other": 47.69,
                               AVERAGE: 49.89}),
            ("self-adaptive (quoted)", {"STEM": 46.07, "Social Science": 56.35, "Humanities": 53.48, "Other": 48.38,
                                        AVERAGE: 50.50}),
        ],
    },
}


@dataclass
class Row:
    """One system (or the constant-answer reference) on its questions."""

    label: str
    reference: bool  # a reference row (best constant answer), not a trained system
    n: int
    cells: dict[str, tuple[float | None, list[float] | None]]  # column → (accuracy, 95 % CI); categories, AVERAGE, MEAN
    entropy: float  # bits of the predicted-letter distribution
    entropy_ci: list[float]  # bootstrap 95 % CI
    letters: dict[str, int]  # predicted letter ("" = none) → count
    correct: dict[str, bool] = field(repr=False)  # question id → correct
    source: str = ""  # results file


@dataclass
class Comparison:
    """Rows, paired differences against the base row, quoted rows, and what the table was measured on."""

    categories: list[str]
    rows: list[Row]
    paired: list[dict[str, Any]]  # per non-base row sharing questions with the base row: paired_stats + label
    header: dict[str, Any]  # model, task, split, protocol, dates, n_boot, base (the paired rows' reference label)
    quotes: list[dict[str, Any]] = field(default_factory=list)  # {source, note, rows: [(label, {column: %})]}
    routing: list[dict[str, Any]] = field(default_factory=list)  # per two-pass row: label + routing_metrics


def load_results(path: str | Path) -> dict[str, Any]:
    """A results file of `t2 eval`; a missing or malformed one is a DataError naming it."""
    path = Path(path)
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such results file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a JSON results file ({e})") from None
    if not isinstance(res, dict) or not all(k in res for k in ("task", "protocol", "predictions")):
        raise DataError(f"{path}: not a results file of t2 eval (needs task, protocol, predictions)")
    return res


def _rows_of(results: dict[str, Any], protocol: str, where: str) -> list[dict[str, Any]]:
    if protocol not in results.get("protocol", []):
        raise ConfigError(f"{where}: has no '{protocol}' predictions (protocols: {', '.join(results.get('protocol', []))})")
    return [r for r in results["predictions"] if r["correct"][protocol] is not None]


def _entropy_ci(codes: list[int], n_boot: int, seed: int) -> list[float]:
    """Bootstrap 95 % CI of the entropy of `codes` (questions resampled, seeded)."""
    import torch

    if not codes:
        return [0.0, 0.0]
    x = torch.tensor(codes)  # (n,)
    idx = torch.randint(0, len(codes), (n_boot, len(codes)), generator=torch.Generator().manual_seed(seed))
    counts = torch.nn.functional.one_hot(x[idx], int(x.max()) + 1).sum(1).double()  # (n_boot, K)
    p = counts / len(codes)
    h = 0.0 - (p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum(1)  # (n_boot,); 0.0 - x: never -0.0
    lo, hi = torch.quantile(h, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return [lo, hi]


def make_row(results: dict[str, Any], protocol: str, categories: list[str], where: str = "",
             n_boot: int = 10_000, seed: int = 0) -> Row:
    """A row from one results dict, recomputed from its labelled per-question predictions."""
    rows = _rows_of(results, protocol, where)
    m = accuracy_metrics(rows, protocol, tuple(categories))
    cells: dict[str, tuple[float | None, list[float] | None]] = {}
    for c in categories:
        cm = m["categories"].get(c)
        cells[c] = (cm["accuracy"], cm["ci95"]) if cm else (None, None)
    cells[AVERAGE] = (m["weighted_average"], m["ci95"])
    cells[MEAN] = (m["category_mean"], m["category_mean_ci95"])
    preds = [r["prediction"][protocol] for r in rows]
    letters = {x: preds.count(x) for x in sorted(set(preds), key=lambda x: (x == NO_ANSWER, x))}
    codes = [list(letters).index(x) for x in preds]
    return Row(label=results.get("label") or "?", reference=bool(results.get("reference")), n=len(rows),
               cells=cells, entropy=entropy_bits(letters.values()), entropy_ci=_entropy_ci(codes, n_boot, seed),
               letters=letters, correct={r["id"]: bool(r["correct"][protocol]) for r in rows}, source=where)


def routing_of(results: dict[str, Any], protocol: str, where: str = "") -> dict[str, Any] | None:
    """What pass 1 decided on the row's questions, recomputed from their per-question decisions (None for a
    one-pass system): decisions, confusion (true category × decision) and routing accuracy."""
    rows = [r for r in _rows_of(results, protocol, where) if "routing" in r]
    if not results.get("routing") or not rows:
        return None
    labels = [e["label"] for e in results.get("experts", [])]
    return {"label": results.get("label") or "?", "n": len(rows)} | routing_metrics(rows, labels)


def _categories(all_results: list[dict[str, Any]], protocol: str) -> list[str]:
    """Category order: as the first results file's metrics list them (the task's order), then any others."""
    order: list[str] = []
    for res in all_results:
        for c in res.get("metrics", {}).get(protocol, {}).get("categories", {}):
            if c not in order:
                order.append(c)
        for r in res["predictions"]:
            if r["category"] and r["category"] not in order:
                order.append(r["category"])
    return order


def _split_name(task: dict[str, Any]) -> str:
    part = task.get("part")
    return f"{part['name']} part of {part['file']}" if part else task["split"]


def _header(named: list[tuple[str, dict[str, Any]]], protocol: str, n_boot: int) -> dict[str, Any]:
    systems = [r for _, r in named if not r.get("reference")]
    tasks = {(r["task"]["name"], _split_name(r["task"])) for _, r in named}
    if len(tasks) > 1:
        raise ConfigError("t2 report: results files cover different tasks or splits: "
                          + "; ".join(f"{t} {s}" for t, s in sorted(tasks)))
    dates = sorted(r["created"][:10] for _, r in named if r.get("created"))
    task, split = next(iter(tasks))
    return {"models": sorted({r["model"] for r in systems}), "task": task, "split": split, "protocol": protocol,
            "dates": [dates[0], dates[-1]] if dates else [], "n_boot": n_boot,
            "git": sorted({(r.get("git") or {}).get("hash") or "" for r in systems} - {""})}


def compare(named: list[tuple[str, dict[str, Any]]], protocol: str = "letter", base: str = "base",
            quote: str | None = None, n_boot: int = 10_000, seed: int = 0) -> Comparison:
    """The comparison of (file name, results dict) pairs, rows in the given order."""
    if not named:
        raise ConfigError("t2 report: give at least one results file")
    if quote is not None and quote not in QUOTES:
        raise ConfigError(f"--quote {quote}: known quotes are {', '.join(QUOTES)}")
    labels = [r.get("label") or "?" for _, r in named]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ConfigError(f"t2 report: label '{twice[0]}' names several results files; relabel with t2 eval --label")
    categories = _categories([r for _, r in named], protocol)
    rows = [make_row(r, protocol, categories, where, n_boot, seed) for where, r in named]
    paired = []
    base_row = next((row for row in rows if row.label == base), None)
    for row in rows:
        shared = sorted(set(row.correct) & set(base_row.correct)) if base_row and row is not base_row else []
        if shared:
            stats = paired_stats([base_row.correct[i] for i in shared], [row.correct[i] for i in shared], n_boot, seed)
            paired.append({"label": row.label, "reference": row.reference} | stats)
    quotes = [QUOTES[quote] | {"name": quote}] if quote else []
    routing = [x for x in (routing_of(r, protocol, where) for where, r in named) if x]
    return Comparison(categories, rows, paired, _header(named, protocol, n_boot) | {"base": base}, quotes, routing)


def to_json(comp: Comparison) -> dict[str, Any]:
    """The comparison as plain JSON (report.json): every number the table and chart show."""
    rows = [{"label": r.label, "reference": r.reference, "n": r.n, "source": r.source,
             "cells": {k: {"accuracy": v[0], "ci95": v[1]} for k, v in r.cells.items()},
             "entropy_bits": r.entropy, "entropy_ci95": r.entropy_ci, "letters": r.letters} for r in comp.rows]
    return {"header": comp.header, "categories": comp.categories, "rows": rows, "paired": comp.paired,
            "quotes": comp.quotes, "routing": comp.routing}

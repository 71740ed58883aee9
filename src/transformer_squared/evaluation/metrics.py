"""Accuracy with 95 % confidence intervals: per subject, per category, question-weighted and category mean.

`weighted_average` is correct / n over the whole split (VMLU's official "Average");
`category_mean` is the plain mean of the per-category accuracies. Intervals: Wilson score for
each accuracy; for `category_mean`, MOVER (Zou & Donner 2008) over the categories' Wilson limits, so a
category at 0 % or 100 % still contributes its uncertainty (a normal approximation gives it none).
Two systems on the same questions: paired bootstrap CI of the difference and McNemar's exact test;
`SIGNIFICANCE_RULE` says when the difference counts as significant.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

MIXTURE = "mixture"  # the routing decision of a row that mixes experts (adapt.registry.MIXTURE; metrics imports no stage)

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
SIGNIFICANCE_LEVEL = 0.05  # two-sided level of the paired comparison
SIGNIFICANCE_RULE = ("significant: McNemar's exact p < 0.05 and the paired bootstrap 95 % CI excludes 0 "
                     "(both tests must agree)")
CATEGORY_MEAN_CI = "MOVER (Zou & Donner) over the categories' Wilson intervals"


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of k successes in n trials; None when n = 0."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(counts: list[tuple[int, int]], z: float = Z95) -> list[float]:
    """95 % interval of the plain mean of independent accuracies kᵢ/nᵢ (C of them) by MOVER: with Wilson
    limits (lᵢ, uᵢ), lower = m − √Σ((pᵢ − lᵢ)/C)², upper = m + √Σ((uᵢ − pᵢ)/C)². One accuracy: its Wilson
    interval; a category at 0 % or 100 % keeps the width of its Wilson interval."""
    C = len(counts)
    ps = [k / n for k, n in counts]
    limits = [wilson(k, n, z) for k, n in counts]
    mean = sum(ps) / C
    down = math.sqrt(sum(((p - lo) / C) ** 2 for p, (lo, _) in zip(ps, limits)))
    up = math.sqrt(sum(((hi - p) / C) ** 2 for p, (_, hi) in zip(ps, limits)))
    return [max(0.0, mean - down), min(1.0, mean + up)]


def _acc(k: int, n: int) -> dict[str, Any]:
    ci = wilson(k, n)
    return {"n": n, "n_correct": k, "accuracy": k / n if n else None, "ci95": list(ci) if ci else None}


def _ordered(names: Iterable[str], first: tuple[str, ...]) -> list[str]:
    seen = [c for c in first]
    for c in names:
        if c not in seen:
            seen.append(c)
    return seen


def accuracy_metrics(rows: list[dict[str, Any]], protocol: str, categories: tuple[str, ...] = ()) -> dict[str, Any]:
    """Metrics of one protocol over result rows (`correct[protocol]` is True/False, or None when unlabelled or
    `seen`: a question an expert saw, answered only to complete a submission)."""
    scored = [r for r in rows if r["correct"][protocol] is not None and not r.get("seen")]
    n_seen = sum(bool(r.get("seen")) for r in rows)
    k = sum(bool(r["correct"][protocol]) for r in scored)
    by_cat: dict[str, list[int]] = {}
    by_subj: dict[str, list[Any]] = {}
    for r in scored:
        ok = int(bool(r["correct"][protocol]))
        by_cat.setdefault(r["category"], [0, 0])
        by_cat[r["category"]][0] += ok
        by_cat[r["category"]][1] += 1
        s = by_subj.setdefault(r["subject"], [0, 0, r["category"]])
        s[0] += ok
        s[1] += 1
    cats = {c: _acc(*by_cat.get(c, (0, 0))) for c in _ordered(by_cat, categories) if c != ""}
    accs = [m["accuracy"] for m in cats.values() if m["accuracy"] is not None]
    mean = sum(accs) / len(accs) if accs else None
    mean_ci = mean_interval([(m["n_correct"], m["n"]) for m in cats.values() if m["n"]]) if accs else None
    subjects = {s: _acc(v[0], v[1]) | {"category": v[2]} for s, v in sorted(by_subj.items()) if s != ""}
    return {
        "n": len(scored), "n_correct": k, "n_unlabelled": len(rows) - len(scored) - n_seen, "n_seen": n_seen,
        "n_no_answer": sum(r["prediction"][protocol] == "" for r in rows),
        "weighted_average": k / len(scored) if scored else None,
        "ci95": list(wilson(k, len(scored))) if scored else None,
        "category_mean": mean, "category_mean_ci95": mean_ci,
        "categories": cats, "subjects": subjects,
    }


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def routing_metrics(rows: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """How pass 1 routed: counts per decision, the confusion matrix of true category (rows) against
    decision (columns), and routing accuracy over the questions whose category is some expert's label
    (correct = routed to that expert); rows given a mixture (uniform, fewshot) route nowhere and are left
    out; accuracy is None when no such question is left."""
    decided = [r["routing"]["decision"] for r in rows]
    counts: dict[str, int] = {}
    for d in decided:
        counts[d] = counts.get(d, 0) + 1
    confusion: dict[str, dict[str, int]] = {}
    for r, d in zip(rows, decided):
        if r["category"]:
            row = confusion.setdefault(r["category"], {})
            row[d] = row.get(d, 0) + 1
    by_label = {_norm(lab): lab for lab in reversed(labels)}  # two experts with one label: the first
    matched = [(by_label[_norm(r["category"])], d) for r, d in zip(rows, decided)
               if r["category"] and _norm(r["category"]) in by_label and d != MIXTURE]  # a mixture routes nowhere
    k = sum(want == d for want, d in matched)
    return {"decisions": counts, "confusion": confusion,
            "accuracy": _acc(k, len(matched)) if matched else None}


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (binomial test at 1/2)."""
    k, m = min(only_a, only_b), only_a + only_b
    return min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m) if m else 1.0


def paired_stats(base: list[bool], other: list[bool], n_boot: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Accuracies of two systems on the same questions, their difference (other − base), its paired-bootstrap
    95 % CI (questions resampled `n_boot` times, seeded) and McNemar's exact p-value."""
    import torch

    n = len(base)
    b = torch.tensor(base, dtype=torch.float64)  # (n,)
    e = torch.tensor(other, dtype=torch.float64)  # (n,)
    idx = torch.randint(0, n, (n_boot, n), generator=torch.Generator().manual_seed(seed))  # (n_boot, n)
    diffs = (e[idx] - b[idx]).mean(1)  # (n_boot,)
    lo, hi = torch.quantile(diffs, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    only_b = int(((b == 1) & (e == 0)).sum())
    only_e = int(((b == 0) & (e == 1)).sum())
    return {"n": n, "acc_base": b.mean().item(), "acc_other": e.mean().item(), "diff": (e - b).mean().item(),
            "ci95": [lo, hi], "base_only_right": only_b, "other_only_right": only_e,
            "mcnemar_p": mcnemar_p(only_b, only_e), "significant": significant(lo, hi, mcnemar_p(only_b, only_e))}


def significant(lo: float, hi: float, p: float) -> bool:
    """`SIGNIFICANCE_RULE`: the CI [lo, hi] of the difference excludes 0 and McNemar's p is below the level."""
    return (lo > 0 or hi < 0) and p < SIGNIFICANCE_LEVEL


def entropy_bits(counts: Iterable[int]) -> float:
    """Shannon entropy (bits) of a distribution given by counts; 0 for one outcome."""
    counts = [c for c in counts if c > 0]
    total = sum(counts)
    return 0.0 - sum(c / total * math.log2(c / total) for c in counts) if total else 0.0  # 0.0 - x: never -0.0

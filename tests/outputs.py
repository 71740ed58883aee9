"""Comparing the outputs of two runs: tensors bit for bit, JSON apart from wall-clock fields."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

VOLATILE = {"created", "timing", "git", "seconds"}  # wall-clock fields, never equal between two runs


def same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), f"{a} != {b}"


def strip(obj):
    """JSON without wall-clock fields."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def same_folder(a: Path, b: Path) -> None:
    """Equal visible files: safetensors by tensors, JSON without wall-clock fields, others byte for byte."""
    names = lambda f: sorted(str(p.relative_to(f)) for p in f.rglob("*")  # noqa: E731
                             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(f).parts))
    assert names(a) == names(b), (names(a), names(b))
    for rel in names(a):
        pa, pb = a / rel, b / rel
        if rel.endswith(".safetensors"):
            same_tensors(pa, pb)
        elif rel.endswith(".json"):
            assert strip(json.loads(pa.read_text("utf-8"))) == strip(json.loads(pb.read_text("utf-8"))), rel
        elif rel.endswith(".jsonl"):
            rows = lambda p: [strip(json.loads(x)) for x in p.read_text("utf-8").splitlines()]  # noqa: E731
            assert rows(pa) == rows(pb), rel
        else:
            assert pa.read_bytes() == pb.read_bytes(), rel

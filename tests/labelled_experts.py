"""Labelled experts for two-pass tests: tiny random Llama experts whose z differ visibly."""

from __future__ import annotations

import torch

from transformer_squared.expert import Expert, attach
from transformer_squared.models import model_id

LABELS = ("STEM", "Humanities")
DESCRIPTIONS = ("Science, technology, engineering and mathematics questions.", "History, law and philosophy questions.")


def make_experts(model, labels=LABELS, descriptions=DESCRIPTIONS, scale: float = 2.0) -> list[Expert]:
    """Reference init plus seeded N(0, scale²) noise on p, one expert per label."""
    svf = attach(model)
    out = []
    for k, (label, desc) in enumerate(zip(labels, descriptions)):
        e = Expert.init(svf.factors, model_id(model), svf.fingerprint, seed=k, label=label, description=desc)
        g = torch.Generator().manual_seed(100 + k)
        e.p = {t: p + scale * torch.randn(p.shape, generator=g) for t, p in e.p.items()}
        out.append(e)
    return out

"""Fixtures for two-pass tests: the tiny model with two labelled experts, in memory and on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from transformer_squared.adapted import AdaptedModel
from transformer_squared.expert import attach

from labelled_experts import make_experts


@pytest.fixture()
def adapted(tiny) -> AdaptedModel:
    """The tiny model with two labelled experts (STEM, Humanities)."""
    model, tok = tiny
    experts = make_experts(model)
    return AdaptedModel(model, tok, attach(model, experts), experts)


@pytest.fixture()
def expert_dirs(tiny, tmp_path) -> list[Path]:
    model, _ = tiny
    return [e.save(tmp_path / f"expert-{e.meta.label}") for e in make_experts(model)]

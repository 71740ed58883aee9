"""Fixtures for two-pass tests: the tiny model with two labelled experts (in memory, or on disk with
training provenance) and a classification expert trained on them with `t2 train --task route`."""

from __future__ import annotations

from pathlib import Path

import pytest

from transformer_squared.experts.adapted import AdaptedModel
from transformer_squared.experts.expert import attach

from labelled_experts import LABELS, make_experts, save_as_run, write_questions


@pytest.fixture()
def adapted(tiny) -> AdaptedModel:
    """The tiny model with two labelled experts (STEM, Humanities)."""
    model, tok = tiny
    experts = make_experts(model)
    return AdaptedModel(model, tok, attach(model, experts), experts)


@pytest.fixture(scope="session")
def routed(tiny_model_dir, tmp_path_factory) -> tuple[list[Path], Path]:
    """(expert folders, classification expert folder): two experts with training provenance on mcq
    files of STEM and Humanities questions, and `t2 train --task route` over them (2 steps)."""
    from transformer_squared.cli import main
    from transformer_squared.models.load import load_model

    root = tmp_path_factory.mktemp("routed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("T2_HOME", str(root / "home"))
        model, _ = load_model(str(tiny_model_dir), device="cpu")
        dirs = []
        for label, e in zip(LABELS, make_experts(model)):
            data = write_questions(root / f"{label}.jsonl", label)
            dirs.append(save_as_run(e, root / f"run-{label}", data, [f"{label}-{k}" for k in range(8)]))
        main(["train", "--task", "route", "--experts", *map(str, dirs), "--model", str(tiny_model_dir),
              "--out", str(root / "route"), "--steps", "2", "--batch-size", "8", "--micro-batch-size", "8",
              "--eval-every", "2", "--lr", "0.5", "--grad_clip", "0"])
    return dirs, root / "route" / "best"


@pytest.fixture()
def expert_dirs(routed) -> list[Path]:
    return routed[0]

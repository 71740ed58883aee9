"""Interrupted work resumes: each command is killed with SIGKILL at a seeded random point of its writes,
rerun, and must end with outputs equal to an uninterrupted run; a full disk leaves the previous file intact.

Kill points are file-system events (`killpoint.py`): the k-th start of an atomic write, folder creation
or rename of the run, k drawn from the seeded RNG over the events an uninterrupted run makes (the seed is
printed; T2_TEST_SEED replays it). The uninterrupted run and the rerun happen in-process; only the killed
run is a subprocess.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import killpoint
from outputs import same_folder
from transformer_squared import atomic
from transformer_squared.cli import main

from vmlu_files import write_vmlu

TESTS = Path(__file__).resolve().parent


def t2(args: list[str]) -> None:
    """`t2 ARGS` in-process; it must succeed."""
    try:
        main(args)
    except SystemExit as e:
        assert not e.code, f"t2 {' '.join(args)} exited with {e.code}"


def reference(args: list[str], root: Path) -> int:
    """Run `t2 ARGS` uninterrupted in-process; returns how many file-system events it made under `root`."""
    with killpoint.counting(root) as events:
        t2(args)
    assert events, "no file-system events to kill at"
    return len(events)


def killed(args: list[str], root: Path, n_events: int, rng) -> int:
    """Run `t2 ARGS` in a subprocess that SIGKILLs itself at a seeded random event under `root`."""
    k = rng.randint(1, n_events)
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import killpoint; killpoint.main()"
    proc = subprocess.run([sys.executable, "-c", code, str(k), str(root), *args], capture_output=True, text=True,
                          env=os.environ | {"TQDM_DISABLE": "1"}, timeout=600)
    assert proc.returncode == -9, f"not killed at event {k} of {n_events}: rc {proc.returncode}\n{proc.stderr[-2000:]}"
    print(f"killed at event {k} of {n_events}")
    return k


@pytest.fixture()
def home(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """A T2_HOME with the tiny model's SVD cache, shared by the uninterrupted and the killed run."""
    monkeypatch.setenv("T2_HOME", str(tmp_path / "home"))
    t2(["decompose", "--model", str(tiny_model_dir), "--device", "cpu"])
    return tmp_path / "home"


def test_decompose_resumes_after_sigkill(tmp_path, tiny_model_dir, monkeypatch, kill_rng):
    args = ["decompose", "--model", str(tiny_model_dir), "--device", "cpu"]
    monkeypatch.setenv("T2_HOME", str(tmp_path / "a"))
    n = reference(args, tmp_path / "a")
    monkeypatch.setenv("T2_HOME", str(tmp_path / "b"))
    killed(args, tmp_path / "b", n, kill_rng)
    t2(args)
    same_folder(tmp_path / "a", tmp_path / "b")


def _mcq(tmp_path: Path) -> Path:
    rows = [{"id": f"q{i}", "question": f"What is {i} plus {i % 4}?", "choices": [str(i + 1), str(i + 7), "none"],
             "answer": "ABC"[i % 3], "subject": f"s{i % 3}"} for i in range(24)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return data


@pytest.mark.parametrize("command", ["train", "baseline"])
def test_training_resumes_after_sigkill(tmp_path, tiny_model_dir, home, kill_rng, command):
    data = _mcq(tmp_path)
    how = (["train", "--lr", "0.05"] if command == "train" else
           ["baseline", "lora", "--r", "2", "--targets", "q_proj,v_proj", "--lr", "0.01"])

    def args(out: Path) -> list[str]:
        return [*how, "--task", "mcq", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out),
                "--steps", "3", "--batch-size", "4", "--micro-batch-size", "2", "--eval-every", "2", "--seed", "3",
                "--device", "cpu"]

    n = reference(args(tmp_path / "a"), tmp_path / "a")
    killed(args(tmp_path / "b"), tmp_path / "b", n, kill_rng)
    started = (tmp_path / "b" / "latest").exists() or (tmp_path / "b" / ".latest.old").exists()
    t2(args(tmp_path / "b") + (["--resume"] if started else []))  # as the --resume error message advises
    same_folder(tmp_path / "a", tmp_path / "b")


def test_eval_resumes_after_sigkill(tmp_path, tiny_model_dir, home, kill_rng):
    data = write_vmlu(tmp_path / "vmlu", per_subject=2)

    def args(out: Path) -> list[str]:  # batch 1: the partial file is saved after every 8 of the 16 questions
        return ["eval", "--model", str(tiny_model_dir), "--task", "vmlu", "--data", str(data), "--device", "cpu",
                "--batch-size", "1", "--out", str(out / "r.json")]

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    n = reference(args(tmp_path / "a"), tmp_path / "a")
    killed(args(tmp_path / "b"), tmp_path / "b", n, kill_rng)
    t2(args(tmp_path / "b"))
    same_folder(tmp_path / "a", tmp_path / "b")


def test_export_resumes_after_sigkill(tmp_path, tiny_model_dir, home, kill_rng):
    from transformer_squared.experts.expert import Expert, attach
    from transformer_squared.models.load import load_model, model_id

    model, _ = load_model(str(tiny_model_dir), device="cpu")
    svf = attach(model)
    e = Expert.init(svf.factors, model_id(model), svf.fingerprint, seed=1, label="x")
    e.p = {t: p + torch.linspace(-1, 1, p.numel()) for t, p in e.p.items()}
    folder = e.save(tmp_path / "expert")

    def args(out: Path) -> list[str]:  # LoRA: the same atomic folder swap as merged, without 70 MB of weights
        return ["export", "lora", "--model", str(tiny_model_dir), "--expert", str(folder), "--rank", "4", "--out",
                str(out / "lora"), "--overwrite"]

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        t2(args(tmp_path / d))  # an earlier export is there: the kill may come while it is being replaced
    n = reference(args(tmp_path / "a"), tmp_path / "a")
    killed(args(tmp_path / "b"), tmp_path / "b", n, kill_rng)
    assert (tmp_path / "b" / "lora").is_dir() or (tmp_path / "b" / ".lora.old").is_dir()  # never lost
    t2(args(tmp_path / "b"))
    same_folder(tmp_path / "a", tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["lora"]  # temp folders cleared


# ---- a full disk --------------------------------------------------------------------------------
def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class HalfWrite:
    """A file whose write() stores half the data, then fails as a full disk does."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        _enospc()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("writer", ["json", "text", "safetensors", "rename"])
def test_a_full_disk_leaves_the_previous_file_intact(tmp_path, monkeypatch, writer):
    path = tmp_path / ("x.safetensors" if writer == "safetensors" else "x.json")
    write = {"json": lambda v: atomic.write_json({"v": v}, path), "text": lambda v: atomic.write_text(str(v), path),
             "rename": lambda v: atomic.write_json({"v": v}, path),
             "safetensors": lambda v: atomic.write_safetensors({"v": torch.full((1000,), float(v))}, path)}[writer]
    write(1)
    before = path.read_bytes()
    if writer in ("json", "text"):  # the data reaches the disk half written, then ENOSPC
        monkeypatch.setattr(atomic, "open", lambda p, mode, **k: HalfWrite(open(p, mode, **k)), raising=False)
    elif writer == "safetensors":
        import safetensors.torch

        def half(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"\x00" * 100)
            _enospc()

        monkeypatch.setattr(safetensors.torch, "save_file", half)
    else:
        monkeypatch.setattr(atomic.os, "replace", _enospc)
    with pytest.raises(OSError) as exc:
        write(2)
    assert exc.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]  # old file whole, no temp left


@pytest.fixture()
def small_disk(tmp_path):
    """A 256 KiB tmpfs: a real file system that runs out of space (needs mount rights; else skipped)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the monkeypatched full-disk tests cover writers")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_eval_on_a_full_disk_keeps_the_previous_results(tmp_path, tiny_model_dir, home, small_disk, capsys):
    data = write_vmlu(tmp_path / "vmlu")
    out = small_disk / "r.json"
    t2(["eval", "--model", str(tiny_model_dir), "--task", "vmlu", "--data", str(data), "--device", "cpu",
        "--out", str(out)])
    before = out.read_bytes()
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\x00" * (free - len(before) // 2))  # room for half a new results file
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", str(tiny_model_dir), "--task", "vmlu", "--data", str(data), "--device", "cpu",
              "--out", str(out)])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.count("\n") == 1 and "No space left on device" in err, err
    assert out.read_bytes() == before
    assert not [n for n in os.listdir(small_disk) if n.endswith(".tmp")]  # no temp file left behind

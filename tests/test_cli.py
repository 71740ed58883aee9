"""The `t2` command end to end on the tiny model: decompose, expert init/show, generate, error lines."""

from __future__ import annotations

import subprocess
import sys

import pytest

from transformer_squared.cli import main


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def test_decompose_init_generate(tiny_model_dir, tmp_path, capsys):
    code, out, _ = run(["decompose", "--model", str(tiny_model_dir), "--device", "cpu"], capsys)
    assert code == 0 and "SVD cache" in out
    code, out, _ = run(["expert", "init", "--model", str(tiny_model_dir), "--out", str(tmp_path / "e"),
                        "--label", "demo", "--seed", "1"], capsys)
    assert code == 0 and (tmp_path / "e" / "expert.json").is_file()
    code, out, _ = run(["expert", "show", str(tmp_path / "e")], capsys)
    assert "label: demo" in out
    code, base, _ = run(["generate", "Hello", "--model", str(tiny_model_dir), "--max-new-tokens", "4"], capsys)
    assert code == 0 and base.strip()
    code, adapted, _ = run(["generate", "Hello", "--model", str(tiny_model_dir), "--expert", str(tmp_path / "e"),
                            "--max-new-tokens", "4"], capsys)
    assert code == 0 and adapted.strip()


def test_errors_exit_2_with_one_line(tmp_path, capsys):
    code, _, err = run(["generate", "hi", "--model", str(tmp_path / "missing")], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    code, _, err = run(["expert", "show", str(tmp_path)], capsys)
    assert code == 2 and "expert.json: missing" in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "transformer_squared.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "decompose" in out.stdout

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


@pytest.mark.parametrize("args, culprit", [
    (["eval", "--nosuchflag"], "No such option: --nosuchflag"),
    (["eval", "--task", "vmlu", "--out", "r.json", "--limit", "abc"], "'--limit'"),
    (["generate", "hi", "extra"], "unexpected extra argument"),
    (["generate"], "Missing argument 'prompt'"),
    (["eval", "--task", "vmlu"], "Missing option '--out'"),
    (["eval", "--task"], "'--task' requires an argument"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
])
def test_usage_mistakes_are_one_line_and_exit_code_2(args, culprit, capsys):
    code, out, err = run(args, capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and culprit in err, err
    assert "Traceback" not in err and "╭" not in err
    if args[0] == "eval" and len(args) > 2 and "--out" in args:  # click's errors; a missing --out is the config's
        assert "try 't2 eval --help'" in err


def test_usage_mistake_through_the_console_script_has_no_traceback():
    out = subprocess.run([sys.executable, "-m", "transformer_squared.cli", "eval", "--nosuchflag"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: No such option: --nosuchflag")
    assert out.stderr.endswith(" (try 't2 eval --help')\n") and out.stderr.count("\n") == 1

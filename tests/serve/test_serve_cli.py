"""`t2 serve` settings are checked before any model loads: one line, exit code 2, every problem named."""

from __future__ import annotations

import pytest

from transformer_squared.cli import main


def test_serve_flags_and_yaml_problems_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", "--strategy", "prompt", "--port", "70000"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "port 70000" in err and "--experts" in err and len(err.strip().splitlines()) == 1
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("max_batch_size: 0\nmax_wait_ms: -1\nmax_bach: 3\n")
    with pytest.raises(SystemExit) as e:
        main(["serve", "--config", str(cfg)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "max_bach" in err
    with pytest.raises(SystemExit) as e:
        main(["serve", "--config", str(cfg).replace("serve.yaml", "missing.yaml")])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err


def test_serve_strategy_needs_its_inputs(capsys):
    for args, needle in ((["--strategy", "cls"], "--cls-expert"), (["--strategy", "fewshot"], "--alpha-from"),
                         (["--strategy", "nope"], "unknown strategy")):
        with pytest.raises(SystemExit) as e:
            main(["serve", "--experts", "a", "b", *args])
        assert e.value.code == 2 and needle in capsys.readouterr().err

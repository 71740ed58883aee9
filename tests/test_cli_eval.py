"""`t2 eval`: table on screen, results JSON, submission CSV, one-line errors; one slow run on SmolLM2."""

from __future__ import annotations

import csv
import json

import pytest

from transformer_squared.cli import main

from vmlu_files import SUBJECTS, write_vmlu


def test_eval_prints_the_category_table_and_writes_results(tiny_model_dir, tmp_path, capsys):
    data = write_vmlu(tmp_path / "vmlu")
    out = tmp_path / "r.json"
    main(["eval", "--model", str(tiny_model_dir), "--task", "vmlu", "--data", str(data), "--device", "cpu",
          "--batch-size", "4", "--out", str(out)])
    screen = capsys.readouterr().out
    for word in ("STEM", "Social Science", "Humanities", "Other", "Average", "generate", "letter"):
        assert word in screen
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["metrics"]["letter"]["n"] == 3 * len(SUBJECTS)
    hits = sum(r["prediction"]["letter"] == r["answer"] for r in res["predictions"])
    assert res["metrics"]["letter"]["weighted_average"] == pytest.approx(hits / (3 * len(SUBJECTS)))


def test_eval_writes_a_submission_for_the_test_split(tiny_model_dir, tmp_path):
    data = write_vmlu(tmp_path / "vmlu", per_subject=2)
    sub = tmp_path / "sub.csv"
    main(["eval", "--model", str(tiny_model_dir), "--task", "vmlu", "--data", str(data), "--split", "test",
          "--protocol", "letter", "--device", "cpu", "--submission", str(sub), "--out", str(tmp_path / "t.json"),
          "--markdown", str(tmp_path / "t.md")])
    assert "| Average (weighted) |" in (tmp_path / "t.md").read_text(encoding="utf-8")
    with open(sub, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "answer"] and len(rows) - 1 == len({r[0] for r in rows[1:]}) == 2 * len(SUBJECTS)


def test_eval_bad_protocol_is_one_line_and_exit_code_2(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--model", str(tiny_model_dir), "--task", "vmlu", "--data", str(tmp_path),
              "--protocol", "logits", "--out", str(tmp_path / "r.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: protocol 'logits'") and "\n" not in err


@pytest.mark.slow
def test_eval_smollm2_twenty_questions(tmp_path, capsys):
    data = write_vmlu(tmp_path / "vmlu")
    out = tmp_path / "r.json"
    main(["eval", "--task", "vmlu", "--data", str(data), "--limit", "20", "--device", "cpu", "--out", str(out)])
    res = json.loads(out.read_text(encoding="utf-8"))
    assert res["model"] == "smollm2-135m-instruct" and len(res["predictions"]) == 20
    for proto in ("generate", "letter"):
        m = res["metrics"][proto]
        hits = sum(bool(r["correct"][proto]) for r in res["predictions"])
        assert m["n"] == 20 and m["weighted_average"] == pytest.approx(hits / 20)
    assert all(r["prediction"]["letter"] in "ABCDE" for r in res["predictions"])
    assert "Average" in capsys.readouterr().out


def _fail(args, capsys) -> str:
    """Run `t2 ARGS`; it must exit 2 with one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail the test if a command loads a model (its arguments already show it cannot finish)."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("transformer_squared.experts.adapted.load_model", refuse)


def test_eval_of_an_empty_split_names_the_file(tmp_path, capsys, no_model_load):
    data = write_vmlu(tmp_path / "vmlu")
    (data / "valid.jsonl").write_text("", encoding="utf-8")
    err = _fail(["eval", "--task", "vmlu", "--data", str(data), "--split", "valid", "--out", str(tmp_path / "r.json")],
                capsys)
    assert f"{data / 'valid.jsonl'}: no rows" in err and not (tmp_path / "r.json").exists()
    (data / "valid.jsonl").write_text("\n\n", encoding="utf-8")  # blank lines only: empty as well
    assert "no rows" in _fail(["eval", "--task", "vmlu", "--data", str(data), "--out", str(tmp_path / "r.json")], capsys)


def test_eval_selecting_nothing_fails_before_the_model_loads(tmp_path, capsys, no_model_load):
    data = write_vmlu(tmp_path / "vmlu")
    base = ["eval", "--task", "vmlu", "--data", str(data), "--out", str(tmp_path / "r.json")]
    assert "--subset 'subject=07' selects no example" in _fail(base + ["--subset", "subject=07"], capsys)
    assert "limit 0: must be at least 1" in _fail(base + ["--limit", "0"], capsys)


@pytest.mark.parametrize("flag", ["--out", "--submission", "--markdown"])
def test_eval_output_paths_are_checked_before_the_model_loads(flag, tmp_path, capsys, no_model_load):
    data = write_vmlu(tmp_path / "vmlu")
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep", encoding="utf-8")
    base = {"--out": str(tmp_path / "r.json")}
    for bad, why in ((tmp_path / "no" / "such" / "x.json", "does not exist"), (tmp_path, "is a folder"),
                     (a_file / "x.json", "is not a folder")):
        args = ["eval", "--task", "vmlu", "--data", str(data), "--split", "test"] + [
            x for k, v in (base | {flag: str(bad)}).items() for x in (k, v)]
        err = _fail(args, capsys)
        assert f"{flag} {bad}: " in err and why in err
    assert not (tmp_path / "no").exists() and a_file.read_text(encoding="utf-8") == "keep"


def test_eval_unsafe_exec_reaches_the_config(monkeypatch, tmp_path):
    import transformer_squared.experts.adapted
    import transformer_squared.evaluation.evaluate

    class Stop(Exception):
        pass

    def fake_evaluate(am, cfg, *args, **kwargs):
        raise Stop(cfg.unsafe_exec)

    monkeypatch.setattr(transformer_squared.experts.adapted, "load_adapted", lambda *a, **k: None)
    monkeypatch.setattr(transformer_squared.evaluation.evaluate, "evaluate", fake_evaluate)
    for flags, expected in (([], False), (["--unsafe-exec"], True)):
        with pytest.raises(Stop) as exc:
            main(["eval", "--task", "humaneval", "--split", "test", "--out", str(tmp_path / "r.json"), *flags])
        assert exc.value.args == (expected,)

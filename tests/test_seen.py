"""Experts record the questions they saw; evaluation leaves them out (single experts, mixtures), says how many,
and `--include-seen` keeps them. Checked against id sets computed here from the data files."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from transformer_squared.evaluation import seen
from transformer_squared.experts.adapted import AdaptedModel
from transformer_squared.cli import main
from transformer_squared.errors import ExpertError
from transformer_squared.evaluation.evaluate import EvalConfig, evaluate
from transformer_squared.experts.expert import META, SEEN, Expert, attach, read_seen
from transformer_squared.models.load import model_id
from transformer_squared.tasks import Example, get_task

from vmlu_files import write_vmlu


def _run(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


@dataclass
class Setup:
    model_dir: Path
    data: Path
    valid_ids: list[str]  # valid.jsonl's ids in file order
    folders: dict[str, Path]  # expert folders A, B, C
    ids: dict[str, set[str]]  # valid ids each of A and B saw


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory) -> Setup:
    """VMLU-format data, and experts A (saw 5 valid questions and one from elsewhere), B (saw 4 valid, one shared
    with A), C (no record); built once for the module, in a cache root of its own."""
    from transformer_squared.models.load import load_model

    tmp_path = tmp_path_factory.mktemp("seen")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("T2_HOME", str(tmp_path / "t2_home"))
        model, _ = load_model(str(tiny_model_dir), device="cpu")
        return _build(model, tiny_model_dir, tmp_path)


def _build(model, tiny_model_dir: Path, tmp_path: Path) -> Setup:
    data = write_vmlu(tmp_path / "vmlu")
    valid = get_task("vmlu").load(str(data), "valid")
    elsewhere = Example(id="01-0001", question="A question from another data set", answer="A", choices=("x", "y"))
    svf = attach(model)
    chosen = {"A": [*(valid[i] for i in (0, 3, 7, 11, 20)), elsewhere], "B": [valid[i] for i in (3, 4, 5, 6)]}
    folders = {}
    for name, saw in chosen.items():
        e = Expert.init(svf.factors, model_id(model), svf.fingerprint, seed=len(name), label=name)
        e.seen = seen.keys(saw)
        folders[name] = e.save(tmp_path / name)
    old = Expert.init(svf.factors, model_id(model), svf.fingerprint, label="C")
    old.seen = None  # as written before experts recorded what they saw
    folders["C"] = old.save(tmp_path / "C")
    valid_ids = {e.id for e in valid}
    ids = {name: {e.id for e in saw if e.id in valid_ids} for name, saw in chosen.items()}
    return Setup(tiny_model_dir, data, [e.id for e in valid], folders, ids)


def _eval(s: Setup, tmp_path, capsys, *extra: str) -> tuple[dict, str, str]:
    out = tmp_path / "r.json"
    code, stdout, stderr = _run(["eval", "--model", str(s.model_dir), "--task", "vmlu", "--data", str(s.data),
                                 "--split", "valid", "--protocol", "letter", "--device", "cpu", "--out", str(out),
                                 *extra], capsys)
    assert code == 0, stderr
    return json.loads(out.read_text(encoding="utf-8")), stdout, stderr


def test_eval_leaves_out_what_the_experts_saw(setup, tmp_path, capsys):
    valid_ids, folders, ids = setup.valid_ids, setup.folders, setup.ids
    res, out, err = _eval(setup, tmp_path, capsys)  # base model: nothing to leave out
    assert [r["id"] for r in res["predictions"]] == valid_ids and res["seen"]["n_excluded"] == 0
    assert "excluded" not in out and err.strip() == ""
    res, out, _ = _eval(setup, tmp_path, capsys, "--expert", str(folders["A"]))
    assert [r["id"] for r in res["predictions"]] == [i for i in valid_ids if i not in ids["A"]]
    assert sorted(res["seen"]["excluded_ids"]) == sorted(ids["A"]) and res["seen"]["n_excluded"] == 5
    assert "excluded 5 question(s) the expert(s) saw in training" in out
    res, out, _ = _eval(setup, tmp_path, capsys, "--expert", str(folders["A"]), "--expert", str(folders["B"]))
    union = ids["A"] | ids["B"]
    assert len(union) == 8 and res["seen"]["n_excluded"] == 8 and "excluded 8 question(s)" in out
    assert [r["id"] for r in res["predictions"]] == [i for i in valid_ids if i not in union]
    res, out, _ = _eval(setup, tmp_path, capsys, "--expert", str(folders["A"]), "--include-seen")
    assert [r["id"] for r in res["predictions"]] == valid_ids and res["seen"]["include_seen"] is True


def test_an_expert_without_a_record_is_warned_about_once(setup, tmp_path, capsys):
    valid_ids, folders = setup.valid_ids, setup.folders
    res, _, err = _eval(setup, tmp_path, capsys, "--expert", str(folders["C"]), "--expert", str(folders["C"]),
                        "--alpha", "0.5", "--alpha", "0.5")
    assert err.strip().count("\n") == 0 and err.startswith("warning: ") and "no record of the questions seen" in err
    assert res["seen"]["experts_without_record"] == [str(folders["C"])] * 2
    assert [r["id"] for r in res["predictions"]] == valid_ids


def test_keys_follow_the_question_not_its_id(setup, tiny, tmp_path):
    """The same question under another id, with other spacing, in another copy of the data, is still left out."""
    data, valid_ids, folders = setup.data, setup.valid_ids, setup.folders
    copy = tmp_path / "copy"
    copy.mkdir()
    rows = [json.loads(x) for x in (data / "valid.jsonl").read_text(encoding="utf-8").splitlines()]
    for r in rows:
        r["id"] = r["id"][:3] + str(9999 - int(r["id"][3:]))
        r["question"] = "  " + r["question"].replace(" ", "   ")
    (copy / "valid.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    cfg = EvalConfig(task="vmlu", data=str(copy), split="valid", protocol="letter", batch_size=8)
    model, tok = tiny
    expert = Expert.load(folders["A"])
    res = evaluate(AdaptedModel(model, tok, attach(model, [expert]), [expert]), cfg)  # the Python API
    assert res["seen"]["n_excluded"] == 5 and len(res["predictions"]) == len(valid_ids) - 5


def test_all_seen_or_broken_record_is_one_line(setup, tmp_path, capsys):
    folders = setup.folders
    base = ["eval", "--model", str(setup.model_dir), "--task", "vmlu", "--data", str(setup.data), "--split", "valid",
            "--subset", "subject=01", "--out", str(tmp_path / "r.json")]
    code, _, err = _run(base + ["--expert", str(folders["A"]), "--limit", "1", "--subset", "id=01-0001"], capsys)
    assert code == 2 and "saw all 1 selected questions" in err and "--include-seen" in err
    broken = Path(shutil.copytree(folders["B"], tmp_path / "B"))
    (broken / SEEN).write_bytes(b"garbage")
    code, _, err = _run(base + ["--expert", str(broken)], capsys)
    assert code == 2 and err.count("\n") == 1 and f"{broken / SEEN}: does not match {META}" in err
    with pytest.raises(ExpertError, match="does not match"):
        Expert.load(broken)
    assert not (tmp_path / "r.json").exists()


def test_exclude_run_accepts_an_expert_folder(setup, tmp_path, capsys):
    valid_ids, folders, ids = setup.valid_ids, setup.folders, setup.ids
    res, _, _ = _eval(setup, tmp_path, capsys, "--exclude-run", str(folders["A"]))  # the base model, A's questions out
    assert [r["id"] for r in res["predictions"]] == [i for i in valid_ids if i not in ids["A"]]
    assert res["seen"]["n_excluded"] == 0  # left out by request, not because the (absent) experts saw them


def test_record_roundtrip_and_untrained_experts(setup):
    folders = setup.folders
    a = Expert.load(folders["A"])
    assert a.seen.dtype == torch.int64 and a.seen.numel() == 6 and torch.equal(read_seen(folders["A"]), a.seen)
    assert json.loads((folders["A"] / META).read_text())["seen"]["n"] == 6
    assert Expert.load(folders["C"]).seen is None and not (folders["C"] / SEEN).exists()
    assert read_seen(folders["C"]) is None


def test_submission_has_every_test_id_and_names_the_seen_ones(setup, tmp_path, capsys):
    """The test split holds the valid questions (same texts): expert A saw 5 of them. The CSV still has every
    test id; the results and the run log name the 5 seen ids, and they stay out of the metrics."""
    import csv

    sub = tmp_path / "sub.csv"
    out = tmp_path / "t.json"
    code, stdout, stderr = _run(["eval", "--model", str(setup.model_dir), "--task", "vmlu", "--data", str(setup.data),
                                 "--split", "test", "--protocol", "letter", "--device", "cpu", "--out", str(out),
                                 "--submission", str(sub), "--expert", str(setup.folders["A"])], capsys)
    assert code == 0, stderr
    test_ids = [json.loads(x)["id"] for x in (setup.data / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    with open(sub, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    assert sorted(r[0] for r in rows) == sorted(test_ids)
    res = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(res["seen"]["answered_seen_ids"]) == sorted(setup.ids["A"]) and res["seen"]["n_excluded"] == 0
    assert sorted(r["id"] for r in res["predictions"] if r.get("seen")) == sorted(setup.ids["A"])
    assert f"answered 5 question(s) the expert(s) saw" in stdout and all(i in stdout for i in setup.ids["A"])
    # a labelled split with a submission: the seen ones are answered but not scored
    code, stdout, stderr = _run(["eval", "--model", str(setup.model_dir), "--task", "vmlu", "--data", str(setup.data),
                                 "--split", "valid", "--protocol", "letter", "--device", "cpu", "--out", str(out),
                                 "--submission", str(sub), "--expert", str(setup.folders["A"])], capsys)
    assert code == 0, stderr
    res = json.loads(out.read_text(encoding="utf-8"))
    m = res["metrics"]["letter"]
    assert m["n"] == len(setup.valid_ids) - 5 and m["n_seen"] == 5 and m["n_unlabelled"] == 0
    assert len(res["predictions"]) == len(setup.valid_ids)

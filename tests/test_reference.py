"""The best-constant-answer reference row and evaluation on a part of a shared split file."""

from __future__ import annotations

import json

from transformer_squared.cli import main
from transformer_squared.tasks import get_task
from transformer_squared.training import splits

from vmlu_files import write_vmlu


def test_constant_row_uses_the_train_part_letters(tmp_path):
    data = write_vmlu(tmp_path / "vmlu", per_subject=3, distinct_ids=True)
    task = get_task("vmlu")
    pool = splits.labelled_pool(task, str(data), ["dev", "valid"])
    parts = splits.stratified_split(pool, 0.2, 0.3, seed=4)
    splits.save_split(splits.split_record(parts, task="vmlu", data=str(data), splits=["dev", "valid"]), tmp_path)
    counts = {x: sum(e.answer == x for e in parts["train"]) for x in "ABCDE"}
    best = sorted(counts, key=lambda x: (-counts[x], x))[0]  # most frequent training answer, ties alphabetical
    out = tmp_path / "const.json"
    main(["eval", "--task", "vmlu", "--data", str(data), "--constant-from", str(tmp_path), "--split-file",
          str(tmp_path / "split.json"), "--part", "holdout", "--out", str(out)])
    res = json.loads(out.read_text())
    held = parts["holdout"]
    assert [r["id"] for r in res["predictions"]] == [e.id for e in held] and res["reference"]
    assert res["label"] == f"best constant ({best})" and res["task"]["part"]["name"] == "holdout"
    hits = sum((best if best in e.letters else e.letters[0]) == e.answer for e in held)
    assert res["metrics"]["letter"]["n_correct"] == hits and res["metrics"]["letter"]["n"] == len(held)
    assert all(r["prediction"]["letter"] == best for r in res["predictions"])

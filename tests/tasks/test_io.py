"""Shared reading: split files in a folder, hub ids versus paths, gzip, blank lines, bad JSON."""

from __future__ import annotations

import gzip

import pytest

from transformer_squared.errors import DataError
from transformer_squared.tasks.io import is_hub_id, read_jsonl, split_path


def test_split_path(tmp_path, jsonl):
    for name in ("train.jsonl", "ARC-Easy-Test.jsonl", "notes.txt"):
        jsonl(tmp_path / name, [])
    assert split_path(tmp_path, "train").name == "train.jsonl"
    assert split_path(tmp_path, "test").name == "ARC-Easy-Test.jsonl"
    assert split_path(tmp_path / "train.jsonl", "whatever").name == "train.jsonl"
    with pytest.raises(DataError, match="no file for split 'dev'"):
        split_path(tmp_path, "dev")
    jsonl(tmp_path / "test.jsonl", [])
    with pytest.raises(DataError, match="2 files"):
        split_path(tmp_path, "test")
    with pytest.raises(DataError, match="no such file"):
        split_path(tmp_path / "missing", "test")


def test_is_hub_id(tmp_path):
    assert is_hub_id("cais/mmlu") and is_hub_id("allenai/ai2_arc:ARC-Easy") and is_hub_id("mbpp")
    assert not is_hub_id(str(tmp_path)) and not is_hub_id("data/file.jsonl") and not is_hub_id("./x")


def test_read_jsonl_gzip_and_blank_lines(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(path) == [(f"{path}:1", {"a": 1}), (f"{path}:3", {"a": 2})]


@pytest.mark.parametrize("line, message", [("{oops", "invalid JSON"), ("[1, 2]", "expected a JSON object")])
def test_read_jsonl_errors(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{path}:2: {message}"):
        read_jsonl(path)

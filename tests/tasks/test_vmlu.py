"""VMLU: data checks, the official prompt byte for byte, letter parsing, subject table, submission CSV."""

from __future__ import annotations

import collections
import importlib.util
from pathlib import Path

import pytest

from transformer_squared.errors import ConfigError, DataError
from transformer_squared.tasks import get_task
from transformer_squared.tasks.vmlu import CATEGORIES, SUBJECTS, category_of, write_submission

REAL = Path(__file__).resolve().parents[2] / "../shared/data/vmlu"  # next to the repo, never inside it

Q4 = {"id": "01-0001", "question": "Hai cộng hai bằng mấy?", "choices": ["A. 3", "B. 4", "C. 5", "D. 22"],
      "answer": "B"}
Q5 = {"id": "58-0002", "question": "Màu của lá cây?", "choices": ["A. Đỏ", "B. Xanh", "C. Tím", "D. Vàng", "E. Đen"],
      "answer": "B"}


@pytest.fixture()
def folder(tmp_path, jsonl):
    jsonl(tmp_path / "dev.jsonl", [Q4, Q5])
    jsonl(tmp_path / "valid.jsonl", [{**Q4, "id": "32-0001"}])
    jsonl(tmp_path / "test.jsonl", [{k: v for k, v in Q4.items() if k != "answer"}])
    return tmp_path


def test_load_strips_prefixes_and_keeps_the_original_options(folder):
    ex = get_task("vmlu").load(str(folder), "dev")
    assert [e.id for e in ex] == ["01-0001", "58-0002"]
    assert ex[0].choices == ("3", "4", "5", "22") and ex[0].meta["options"] == ("A. 3", "B. 4", "C. 5", "D. 22")
    assert ex[0].answer == "B" and ex[0].subject == "01" and ex[0].category == "STEM"
    assert ex[1].category == "Other" and ex[1].meta["subject_name"] == "Driving License Certificate"
    assert get_task("vmlu").load(str(folder), "test")[0].answer == ""


def test_official_prompt_byte_for_byte(folder):
    # code_benchmark/test_prompt.py: '$preamble\n\n$prompt\n\n $a\n $b\n $c\n $d\n $e\nĐáp án:'
    ex = get_task("vmlu").load(str(folder), "dev")
    four, five = get_task("vmlu").format(ex)
    assert four == (
        "Chỉ đưa ra chữ cái đứng trước câu trả lời đúng (A, B, C, D hoặc E) của câu hỏi trắc nghiệm sau: "
        "\n\nHai cộng hai bằng mấy?\n\n A. 3\n B. 4\n C. 5\n D. 22\n \nĐáp án:"
    )
    assert five.endswith("\n\nMàu của lá cây?\n\n A. Đỏ\n B. Xanh\n C. Tím\n D. Vàng\n E. Đen\nĐáp án:")


def test_chat_variant_wraps_the_same_text(folder, chat_tokenizer):
    task = get_task("vmlu")
    ex = task.load(str(folder), "dev")
    plain, chat = task.format(ex[:1]), task.format(ex[:1], chat_tokenizer, chat=True)
    assert chat == [f"<user>{plain[0]}</user><assistant>"]
    with pytest.raises(ConfigError):
        task.format(ex[:1], None, chat=True)


@pytest.mark.parametrize("completion, letter", [
    (" B", "B"), ("b", "B"), ("\n C.", "C"), ("A nữa", "A"), (" E", ""), ("Đáp", ""), ("", ""), ("  ", ""),
])
def test_parse_reads_the_first_character(folder, completion, letter):
    task = get_task("vmlu")
    ex = task.load(str(folder), "dev")[:1]  # four options: A-D
    assert task.parse(ex, [completion]) == [letter]


def test_score(folder):
    task = get_task("vmlu")
    ex = task.load(str(folder), "dev")
    assert task.score(ex, ["B", "C"]) == [True, False]
    assert task.score(ex, ["", ""]) == [False, False]


def test_subject_table():
    assert len(SUBJECTS) == 58 and sorted(SUBJECTS) == [f"{i:02d}" for i in range(1, 59)]
    counts = collections.Counter(cat for _, cat in SUBJECTS.values())
    assert counts == {"STEM": 21, "Social Science": 10, "Humanities": 18, "Other": 9}
    assert CATEGORIES == ("STEM", "Social Science", "Humanities", "Other")
    assert [category_of(s) for s in ("01", "21", "22", "31", "32", "49", "50", "58")] == [
        "STEM", "STEM", "Social Science", "Social Science", "Humanities", "Humanities", "Other", "Other"]
    assert category_of("41-0007") == "Humanities"
    with pytest.raises(ConfigError):
        category_of("59")


@pytest.mark.parametrize("line, message", [
    ('{"id": "01-0002", "question": "x", "choices": ["A. 1", "B. 2"]', "invalid JSON"),
    ({"id": "01-0002", "choices": ["A. 1", "B. 2"], "answer": "A"}, "missing field 'question'"),
    ({"id": "01-0002", "question": "x", "choices": ["A. 1", "B. 2"], "answer": "C"}, "not among the 2 choices"),
    ({"id": "01-0002", "question": "x", "choices": [], "answer": "A"}, "empty choice list"),
    ({"id": "01-0001", "question": "x", "choices": ["A. 1", "B. 2"], "answer": "A"}, "duplicate id '01-0001'"),
    ({"id": "59-0001", "question": "x", "choices": ["A. 1", "B. 2"], "answer": "A"}, "unknown subject '59'"),
    ({"id": "1-1", "question": "x", "choices": ["A. 1", "B. 2"], "answer": "A"}, "SS-NNNN"),
    ({"id": "01-0002", "question": "x", "choices": ["A. 1", "C. 2"], "answer": "A"}, "does not start with 'B. '"),
    ({"id": "01-0002", "question": "x", "choices": ["A. 1", "B. 2"]}, "missing field 'answer'"),
])
def test_bad_rows_name_file_and_line(tmp_path, jsonl, line, message):
    path = jsonl(tmp_path / "dev.jsonl", [Q4, line])
    with pytest.raises(DataError) as err:
        get_task("vmlu").load(str(tmp_path), "dev")
    text = str(err.value)
    assert text.startswith(f"{path}:2: ") and message in text and "\n" not in text


def test_missing_split_and_missing_data(tmp_path):
    with pytest.raises(DataError, match="no file for split 'valid'"):
        get_task("vmlu").load(str(tmp_path), "valid")
    with pytest.raises(ConfigError):
        get_task("vmlu").load(None, "dev")


def test_hub_id_fails_with_one_line_offline(monkeypatch):
    if importlib.util.find_spec("datasets") is not None:  # stand in for the unreachable hub: fast and certain
        import datasets

        def unreachable(*args, **kwargs):
            raise ConnectionError("Couldn't reach 'no-such-owner/no-such-vmlu' on the Hub\n(retried 5 times)")

        monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError) as err:
        get_task("vmlu").load("no-such-owner/no-such-vmlu", "dev")
    assert str(err.value).startswith("no-such-owner/no-such-vmlu: ") and "\n" not in str(err.value)


def test_write_submission(tmp_path):
    path = tmp_path / "sub" / "submission.csv"
    write_submission(path, ["01-0001", "58-0002"], ["B", "E"])
    assert path.read_text(encoding="utf-8") == "id,answer\n01-0001,B\n58-0002,E\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["submission.csv"]  # no temp file left
    with pytest.raises(DataError, match="appears twice"):
        write_submission(path, ["01-0001", "01-0001"], ["B", "C"])
    for bad in ("", "BC", "b", "F"):
        with pytest.raises(DataError, match="not one letter"):
            write_submission(path, ["01-0001"], [bad])
    with pytest.raises(ConfigError):
        write_submission(path, ["01-0001"], [])
    assert path.read_text(encoding="utf-8") == "id,answer\n01-0001,B\n58-0002,E\n"  # failures left it intact


@pytest.mark.skipif(not REAL.is_dir(), reason="the real VMLU files are not next to the repo")
def test_real_files():
    task = get_task("vmlu")
    splits = {s: task.load(str(REAL), s) for s in ("dev", "valid", "test")}
    assert {s: len(ex) for s, ex in splits.items()} == {"dev": 303, "valid": 744, "test": 9833}
    for split, ex in splits.items():
        assert {e.subject for e in ex} == set(SUBJECTS), split
        assert all(e.category == SUBJECTS[e.id[:2]][1] for e in ex)
    assert all(e.answer in e.letters for s in ("dev", "valid") for e in splits[s])
    assert all(e.answer == "" for e in splits["test"])
    for e, p in zip(splits["dev"], task.format(splits["dev"])):
        n_newlines = 9 + e.question.count("\n") + sum(o.count("\n") for o in e.meta["options"])
        assert p.startswith("Chỉ đưa ra chữ cái") and p.endswith("\nĐáp án:") and p.count("\n") == n_newlines

"""evaluate: metrics against hand computations, resume, submission, experts, generative tasks."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from transformer_squared.models import engine
from transformer_squared.evaluation import evaluate as ev
from transformer_squared.experts.adapted import AdaptedModel
from transformer_squared.errors import ConfigError
from transformer_squared.evaluation.evaluate import EvalConfig, evaluate, limit_examples, plan_eval
from transformer_squared.experts.expert import Expert, attach
from transformer_squared.evaluation.metrics import wilson
from transformer_squared.models.load import model_id
from transformer_squared.tasks import Example

from vmlu_files import CATEGORY, SUBJECTS, write_vmlu


@pytest.fixture()
def vmlu_dir(tmp_path):
    return write_vmlu(tmp_path / "vmlu")


def _cfg(vmlu_dir, **kw) -> EvalConfig:
    return EvalConfig(task="vmlu", data=str(vmlu_dir), **({"batch_size": 4} | kw))


def test_metrics_match_hand_computation(tiny, vmlu_dir):
    model, tok = tiny
    res = evaluate(AdaptedModel(model, tok), _cfg(vmlu_dir))
    rows = res["predictions"]
    assert len(rows) == 3 * len(SUBJECTS) and res["protocol"] == ["generate", "letter"]
    for proto in ("generate", "letter"):
        m = res["metrics"][proto]
        hits = [r["prediction"][proto] == r["answer"] for r in rows]
        assert m["n"] == len(rows) and m["n_correct"] == sum(hits)
        assert m["weighted_average"] == pytest.approx(sum(hits) / len(rows))
        per_cat = {}
        for r, h in zip(rows, hits):
            assert r["category"] == CATEGORY[r["id"][:2]] and r["correct"][proto] == h
            per_cat.setdefault(r["category"], []).append(h)
        for cat, hs in per_cat.items():
            assert m["categories"][cat]["accuracy"] == pytest.approx(sum(hs) / len(hs))
        cat_accs = [sum(hs) / len(hs) for hs in per_cat.values()]
        assert m["category_mean"] == pytest.approx(sum(cat_accs) / 4)
        assert m["subjects"]["05"]["n"] == 3 and m["subjects"]["05"]["category"] == "STEM"
    for r in rows:  # generate: the first non-space character of the one greedy token, if it is a valid letter
        first = r["completion"].lstrip()[:1].upper()
        n_choices = 3 + (int(r["id"][-4:]) - 1) % 3
        assert r["prediction"]["generate"] == (first if first and first in "ABCDE"[:n_choices] else "")


def test_letter_predictions_equal_argmax_of_unpadded_logits(tiny, vmlu_dir):
    model, tok = tiny
    res = evaluate(AdaptedModel(model, tok), _cfg(vmlu_dir, limit=6))
    from transformer_squared.tasks import get_task

    task = get_task("vmlu")
    examples = task.load(str(vmlu_dir), "valid")[:6]
    for e, prompt, row in zip(examples, task.format(examples), res["predictions"]):
        with torch.no_grad():
            logits = model(input_ids=tok(prompt, return_tensors="pt")["input_ids"]).logits[0, -1]  # (V,)
        ids = engine.letter_token_ids(tok, e.letters)
        scores = [torch.logsumexp(logits[v], 0).item() for v in ids]
        assert row["prediction"]["letter"] == e.letters[max(range(len(scores)), key=scores.__getitem__)]


def test_wilson_interval_matches_formula():
    lo, hi = wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    z2 = 1.959963984540054 ** 2
    assert wilson(0, 16) == (0.0, pytest.approx(z2 / (16 + z2)))
    assert wilson(0, 0) is None


def test_results_json_fields_and_batching_do_not_change_predictions(tiny, vmlu_dir, tmp_path):
    model, tok = tiny
    out = tmp_path / "r.json"
    a = evaluate(AdaptedModel(model, tok), _cfg(vmlu_dir, batch_size=1), out)
    b = evaluate(AdaptedModel(model, tok), _cfg(vmlu_dir, batch_size=7))
    assert [r["prediction"] for r in a["predictions"]] == [r["prediction"] for r in b["predictions"]]
    saved = json.loads(out.read_text(encoding="utf-8"))
    for key in ("model", "experts", "protocol", "config", "task", "git", "metrics", "predictions", "ci_method"):
        assert key in saved
    assert saved["model"] == model_id(model) and saved["task"]["version"] == "1"
    assert saved["config"]["batch_size"] == 1 and not ev.partial_path(out).exists()
    assert set(saved["predictions"][0]) >= {"id", "prediction", "answer", "correct", "subject", "category"}


def test_stratified_sample_is_proportional_seeded_and_in_order():
    examples = [Example(id=f"{s}-{i}", question="q", answer="A", choices=("x", "y"), subject=s)
                for s, n in (("a", 50), ("b", 30), ("c", 20)) for i in range(n)]
    got = limit_examples(examples, 10, "stratified", seed=1)
    assert [sum(e.subject == s for e in got) for s in "abc"] == [5, 3, 2]
    assert got == limit_examples(examples, 10, "stratified", seed=1) != limit_examples(examples, 10, "stratified", seed=2)
    assert [examples.index(e) for e in got] == sorted(examples.index(e) for e in got)
    assert limit_examples(examples, 4) == examples[:4] and limit_examples(examples, None) == examples


def test_interrupted_run_resumes_without_redoing_work(tiny, vmlu_dir, tmp_path, monkeypatch):
    model, tok = tiny
    out = tmp_path / "r.json"
    cfg = _cfg(vmlu_dir, batch_size=2, save_every=2)  # a partial save every 4 questions
    seen = []

    def stop_after_eight(n):
        seen.append(n)
        if sum(seen) >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(AdaptedModel(model, tok), cfg, out, progress=stop_after_eight)
    partial = json.loads(ev.partial_path(out).read_text(encoding="utf-8"))
    assert len(partial["records"]) == 4 and not out.exists()  # the chunk in flight is lost, the saved one is kept

    scored = []
    real = engine.score_letters
    monkeypatch.setattr(engine, "score_letters", lambda m, t, prompts, *a, **k: scored.extend(prompts) or real(m, t, prompts, *a, **k))
    resumed = evaluate(AdaptedModel(model, tok), cfg, out)
    assert len(scored) == 3 * len(SUBJECTS) - 4
    fresh = evaluate(AdaptedModel(model, tok), _cfg(vmlu_dir))
    assert resumed["predictions"] == fresh["predictions"]


def test_resume_when_every_question_was_saved_before_the_kill(tiny, vmlu_dir, tmp_path, monkeypatch):
    """Killed after the last partial save, before the results file: the rerun has nothing left to score
    (an empty batch once crashed the tokenizer; test_interrupt's random kill point found it)."""
    model, tok = tiny
    out = tmp_path / "r.json"
    cfg = _cfg(vmlu_dir, batch_size=2, save_every=2)
    real_finish = ev.finish

    def die(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "finish", die)
    with pytest.raises(KeyboardInterrupt):
        evaluate(AdaptedModel(model, tok), cfg, out)
    assert len(json.loads(ev.partial_path(out).read_text(encoding="utf-8"))["records"]) == 3 * len(SUBJECTS)
    monkeypatch.setattr(ev, "finish", real_finish)
    scored = []
    real = engine.score_letters
    monkeypatch.setattr(engine, "score_letters", lambda m, t, prompts, *a, **k: scored.extend(prompts) or real(m, t, prompts, *a, **k))
    resumed = evaluate(AdaptedModel(model, tok), cfg, out)
    assert scored == [] and out.exists() and not ev.partial_path(out).exists()
    assert resumed["predictions"] == evaluate(AdaptedModel(model, tok), _cfg(vmlu_dir))["predictions"]
    assert engine.tokenize(tok, []) == []


def test_submission_has_every_test_id_once(tiny, vmlu_dir, tmp_path):
    model, tok = tiny
    sub = tmp_path / "sub.csv"
    res = evaluate(AdaptedModel(model, tok), _cfg(vmlu_dir, split="test"), tmp_path / "t.json", sub)
    with open(sub, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    ids = [json.loads(line)["id"] for line in (vmlu_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[0] == ["id", "answer"]
    assert sorted(r[0] for r in rows[1:]) == sorted(ids) and len(rows) - 1 == len(set(ids))
    assert all(r[1] in "ABCDE" and len(r[1]) == 1 for r in rows[1:])
    assert res["metrics"]["letter"]["n"] == 0 and res["metrics"]["letter"]["weighted_average"] is None
    assert res["submission"]["n"] == len(ids)


def test_mixture_of_experts_runs_merged_with_the_adapted_weights(tiny, vmlu_dir, monkeypatch):
    model, tok = tiny
    svf = attach(model, targets="mlp")
    e1 = Expert.init(svf.factors, model_id(model), svf.fingerprint, seed=1, label="one")
    e2 = Expert.init(svf.factors, model_id(model), svf.fingerprint, seed=2, label="two")
    for e in (e1, e2):  # spread z so the adapted weights differ visibly from the base
        e.p = {t: torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) for t, p in e.p.items()}
    alpha = torch.tensor([0.25, 0.75])
    target = svf.targets[0]
    W0 = model.get_submodule(target).weight.detach().clone()
    f = svf.factors[target]
    z = 0.25 * torch.sigmoid(e1.p[target]) + 0.75 * torch.sigmoid(e2.p[target])  # (r,)
    s2 = f.S * z * (f.S.sum() / (f.S * z).sum())  # s' = s ⊙ z · Σs / Σ(s ⊙ z)
    expected = f.U @ torch.diag(s2) @ f.V.T  # (out, in)
    during = []
    real = engine.score_letters
    monkeypatch.setattr(engine, "score_letters", lambda m, *a, **k: during.append(
        m.get_submodule(target).weight.detach().clone()) or real(m, *a, **k))
    res = evaluate(AdaptedModel(model, tok, svf, [e1, e2], alpha), _cfg(vmlu_dir, limit=4))
    torch.testing.assert_close(during[0], expected, rtol=1e-4, atol=1e-4)  # float32 SVD round trip
    assert torch.equal(model.get_submodule(target).weight, W0)  # restored bit for bit
    assert [e["label"] for e in res["experts"]] == ["one", "two"] and res["alpha"] == [0.25, 0.75]


def test_generative_task_generates_parses_and_scores(tiny, tmp_path):
    model, tok = tiny
    data = tmp_path / "gsm8k"
    data.mkdir()
    rows = [{"question": f"What is {a} + {a}?", "answer": f"{a} + {a} = {2 * a}\n#### {2 * a}"} for a in range(1, 5)]
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    res = evaluate(AdaptedModel(model, tok), EvalConfig(task="gsm8k", data=str(data), split="test", max_new_tokens=3))
    from transformer_squared.tasks.gsm8k import extract_answer

    assert res["protocol"] == ["generate"]
    for r in res["predictions"]:
        assert r["prediction"]["generate"] == extract_answer(r["completion"])
        assert r["correct"]["generate"] == (r["prediction"]["generate"] == r["answer"])
    with pytest.raises(ConfigError, match="letter"):
        evaluate(AdaptedModel(model, tok), EvalConfig(task="gsm8k", data=str(data), split="test", protocol="letter"))


def test_bad_config_values_are_reported_together():
    with pytest.raises(ConfigError, match="protocol 'x'.*batch_size 0"):
        EvalConfig(protocol="x", batch_size=0)


def test_subset_and_exclude_run_keep_training_questions_out(tiny, vmlu_dir, tmp_path):
    model, tok = tiny
    am = AdaptedModel(model, tok)
    everything = [r["id"] for r in evaluate(am, _cfg(vmlu_dir))["predictions"]]
    used = {"train": everything[:4], "val": everything[4:6], "holdout": everything[6:8]}
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text(json.dumps({"ids": used}))
    kept = [r["id"] for r in evaluate(am, _cfg(vmlu_dir, exclude_run=str(run)))["predictions"]]
    assert kept == everything[6:]  # independent: all ids minus train and val, in data order
    cat = next(iter(CATEGORY.values()))
    only = evaluate(am, _cfg(vmlu_dir, subset=f"category={cat}"))["predictions"]
    assert only and all(r["category"] == cat for r in only)
    assert len(only) == sum(1 for r in evaluate(am, _cfg(vmlu_dir))["predictions"] if r["category"] == cat)


def test_generative_task_writes_a_jsonl_submission(tiny, tmp_path):
    """A generative task's submission is JSONL of the parsed answer and raw completion (once refused as not MCQ)."""
    model, tok = tiny
    data = tmp_path / "gsm8k"
    data.mkdir()
    rows = [{"question": f"What is {a} + {a}?", "answer": f"#### {2 * a}"} for a in range(1, 4)]
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    sub = tmp_path / "sub.jsonl"
    res = evaluate(AdaptedModel(model, tok), EvalConfig(task="gsm8k", data=str(data), split="test", max_new_tokens=3),
                   submission_path=sub)
    lines = [json.loads(line) for line in sub.read_text(encoding="utf-8").splitlines()]
    assert lines == [{"id": r["id"], "answer": r["prediction"]["generate"], "completion": r["completion"]}
                     for r in res["predictions"]]
    assert res["submission"] == {"path": str(sub), "protocol": "generate", "n": 3}
    with pytest.raises(ConfigError, match="submission_protocol 'letter'.*generate"):
        plan_eval(EvalConfig(task="gsm8k", data=str(data), split="test", submission_protocol="letter"),
                submission_path=tmp_path / "s2.jsonl")

"""lm-evaluation-harness backend: a local task runs offline on the tiny model, with and without experts."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("lm_eval")

from test_export import make_expert  # noqa: E402

from transformer_squared.experts.adapted import load_adapted  # noqa: E402
from transformer_squared.experts.expert import attach  # noqa: E402

QUESTIONS = [
    ("2 + 2 =", ["3", "4", "5"], 1), ("The sky is", ["blue", "green", "loud"], 0),
    ("Paris is in", ["Spain", "Italy", "France"], 2), ("Ice is", ["cold", "hot", "purple"], 0),
    ("10 / 2 =", ["2", "5", "8"], 1), ("Cats say", ["woof", "meow", "moo"], 1),
]


@pytest.fixture()
def task_dir(tmp_path):
    """A multiple-choice task and a generation task over a JSONL file, both local (no hub)."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (tmp_path / "t2_tiny_mc.yaml").write_text(
        "task: t2_tiny_mc\n" + common + "output_type: multiple_choice\n"
        "doc_to_text: \"{{question}}\"\ndoc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{answer}}\"\n"
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n")
    (tmp_path / "t2_tiny_gen.yaml").write_text(
        "task: t2_tiny_gen\n" + common + "output_type: generate_until\n"
        "doc_to_text: \"{{question}}\"\ndoc_to_target: \"{{choices[answer]}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 4\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\nmetadata:\n  version: 1.0\n")
    return tmp_path


def _run(lm, task_dir, tasks):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=str(task_dir),
                           include_defaults=False), log_samples=True)


def _loglikelihood_by_hand(model, tok, context: str, continuation: str) -> float:
    """Σ log p(continuation tokens | context): one unpadded forward pass over context + continuation."""
    ctx = tok.encode(context)
    full = tok.encode(context + continuation)
    assert full[: len(ctx)] == ctx
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0].double(), -1)  # (T, V)
    return sum(float(logp[i - 1, full[i]]) for i in range(len(ctx), len(full)))


def test_local_tasks_run_with_an_expert(tiny, tiny_model_dir, task_dir, tmp_path):
    from transformer_squared.interop.lm_eval_adapter import run_lm_eval
    from transformer_squared.experts.svf import mix

    model, tok = tiny
    expert = make_expert(model)
    path = expert.save(tmp_path / "expert")
    res = run_lm_eval(str(tiny_model_dir), ["t2_tiny_mc", "t2_tiny_gen"], experts=[path], include_path=task_dir,
                   include_defaults=False, device="cpu", limit=4, log_samples=True)
    assert "exact_match,none" in res["results"]["t2_tiny_gen"]
    assert res["n-samples"]["t2_tiny_mc"]["effective"] == 4
    # accuracy recomputed outside lm-eval: the expert merged by hand, each choice scored by one forward pass
    with attach(model, [expert]).merged({t: z.detach() for t, z in mix([expert.z()], torch.ones(1)).items()}):
        hand = [[_loglikelihood_by_hand(model, tok, q, " " + c) for c in choices] for q, choices, _ in QUESTIONS[:4]]
    by_doc = {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in res["samples"]["t2_tiny_mc"]}
    for d, lls in enumerate(hand):
        assert by_doc[d] == pytest.approx(lls, abs=2e-3)
    hits = [max(range(len(lls)), key=lls.__getitem__) == QUESTIONS[d][2] for d, lls in enumerate(hand)]
    assert res["results"]["t2_tiny_mc"]["acc,none"] == pytest.approx(sum(hits) / 4)


def test_expert_changes_loglikelihoods_and_mixture_hook_groups_documents(tiny_model_dir, task_dir, tmp_path):
    from transformer_squared.interop.lm_eval_adapter import T2LM

    am = load_adapted(str(tiny_model_dir), device="cpu")
    path = make_expert(am.model, scale=2.0).save(tmp_path / "expert")
    base = _run(T2LM(adapted=am), task_dir, ["t2_tiny_mc"])
    expert_am = load_adapted(str(tiny_model_dir), experts=[path], device="cpu")
    fixed = _run(T2LM(adapted=expert_am), task_dir, ["t2_tiny_mc"])

    class EvenDocsOnly(T2LM):
        """Per-document strategy: the expert for even doc ids, base weights for odd ones."""

        def mixture_for(self, requests):
            return torch.tensor([[1.0 if r.doc_id % 2 == 0 else 0.0] for r in requests])

    mixed = _run(EvenDocsOnly(adapted=expert_am), task_dir, ["t2_tiny_mc"])

    def lls(res):
        return {s["doc_id"]: [r[0][0] for r in s["resps"]] for s in res["samples"]["t2_tiny_mc"]}

    b, f, m = lls(base), lls(fixed), lls(mixed)
    assert any(abs(x - y) > 1e-3 for d in b for x, y in zip(b[d], f[d]))  # the expert matters
    for d in m:
        want = f[d] if d % 2 == 0 else b[d]
        assert m[d] == pytest.approx(want, abs=1e-4)
    # weights are restored after every group
    assert torch.equal(am.model.model.layers[0].mlp.up_proj.weight, expert_am.model.model.layers[0].mlp.up_proj.weight)


def test_cli_lm_eval(tiny_model_dir, task_dir, tmp_path, capsys):
    from transformer_squared.cli import main

    with pytest.raises(SystemExit) as e:
        main(["lm-eval", "--model", str(tiny_model_dir), "--tasks", "t2_tiny_mc", "--include-path", str(task_dir),
              "--no-builtin-tasks", "--limit", "3", "--device", "cpu", "--output", str(tmp_path / "r.json")])
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert (e.value.code or 0) == 0 and "t2_tiny_mc" in out
    assert "acc,none" in json.loads((tmp_path / "r.json").read_text())["results"]["t2_tiny_mc"]
    with pytest.raises(SystemExit) as e:
        main(["lm-eval", "--model", str(tiny_model_dir), "--tasks", "nope", "--include-path", str(task_dir),
              "--no-builtin-tasks"])
    assert e.value.code == 2 and "unknown lm-eval task 'nope'" in capsys.readouterr().err


def test_mixture_hook_uses_the_pass1_strategies(tiny_model_dir, task_dir, tmp_path):
    """`strategy=`: the oracle routes each request by its lm-eval task name to the expert of that label,
    so its log-likelihoods equal a fixed mixture on that expert; prompt routing gives one row per request."""
    from transformer_squared.interop.lm_eval_adapter import T2LM

    am = load_adapted(str(tiny_model_dir), device="cpu")
    paths = [make_expert(am.model, seed=k, scale=2.0, label=label).save(tmp_path / label)
             for k, label in enumerate(["t2_tiny_mc", "arithmetic"])]
    routed = _run(T2LM(adapted=load_adapted(str(tiny_model_dir), experts=paths, device="cpu"), strategy="oracle"),
                  task_dir, ["t2_tiny_mc"])
    fixed = _run(T2LM(adapted=load_adapted(str(tiny_model_dir), experts=paths, alpha=[1.0, 0.0], device="cpu")),
                 task_dir, ["t2_tiny_mc"])
    lls = [{s["doc_id"]: [r[0][0] for r in s["resps"]] for s in res["samples"]["t2_tiny_mc"]} for res in (routed, fixed)]
    assert lls[0] == lls[1]
    lm = T2LM(adapted=load_adapted(str(tiny_model_dir), experts=paths, device="cpu"), strategy="prompt")
    requests = [type("Req", (), {"args": (q, " a"), "task_name": "t2_tiny_mc"})() for q, _, _ in QUESTIONS[:3]]
    alpha = lm.mixture_for(requests)
    assert alpha.shape == (3, 2) and set(alpha.sum(1).tolist()) <= {0.0, 1.0}


def test_fewshot_strategy_fits_itself_in_the_backend(tiny_model_dir, task_dir, tmp_path):
    """`fewshot` without alpha_from: the pipeline searches α once on shots of `fit_task` (settings from a
    `strategy_config` YAML file, as lm_eval's --model_args would name it), and every document then runs with
    that α: its log-likelihoods equal those of a fixed mixture at the α found."""
    from transformer_squared.interop.lm_eval_adapter import T2LM

    am = load_adapted(str(tiny_model_dir), device="cpu")
    paths = [make_expert(am.model, seed=k, scale=2.0, label=label).save(tmp_path / label)
             for k, label in enumerate(["a", "b"])]
    settings = tmp_path / "fewshot.yaml"
    settings.write_text(f"fewshot: {{shots: 3, population: 4, generations: 2, fit_task: mcq, "
                        f"fit_data: {task_dir / 'data.jsonl'}}}\n")
    lm = T2LM(adapted=load_adapted(str(tiny_model_dir), experts=paths, device="cpu"), strategy="fewshot",
              strategy_config=str(settings))
    routed = _run(lm, task_dir, ["t2_tiny_mc"])
    alpha = lm.pipeline.strategy.alpha
    assert len(lm.pipeline.fit()) == 3 and alpha.shape == (2,)
    fixed = _run(T2LM(adapted=load_adapted(str(tiny_model_dir), experts=paths, alpha=alpha.tolist(), device="cpu")),
                 task_dir, ["t2_tiny_mc"])
    lls = [{s["doc_id"]: [r[0][0] for r in s["resps"]] for s in res["samples"]["t2_tiny_mc"]} for res in (routed, fixed)]
    assert lls[0] == lls[1]

"""The REINFORCE trainer on a tiny random Llama: objective, KL, step, micro-batching, splits, resume, atomic checkpoints."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from transformer_squared.evaluation import seen
from transformer_squared.training import rollout, splits
from transformer_squared.training.checkpoint import STATE_META, load_trainer_state
from transformer_squared.config import load_config
from transformer_squared.errors import ConfigError
from transformer_squared.experts.expert import Expert, attach
from transformer_squared.experts.svd import Factors
from transformer_squared.tasks.base import Example
from transformer_squared.tasks.code import CodeTask
from transformer_squared.tasks.kinds import CODE, GENERATIVE, MULTIPLE_CHOICE, right_or_wrong
from transformer_squared.training.train import SVFRun, TrainConfig

REPO = Path(__file__).resolve().parents[2]
LETTERS = ("A", "B", "C")


def _examples(n: int = 24) -> list[Example]:
    return [Example(id=f"q{i:02d}", question=f"What is {i} plus {i % 4}?", answer=LETTERS[i % 3],
                    choices=(str(i + 1), str(i + 7), str(2 * i + 3)), subject=f"s{i % 3}", category=f"c{i % 2}")
            for i in range(n)]


@dataclass
class TinyMCQ:
    """A Task (protocol) over fixed in-memory questions."""

    name: str = "tiny-mcq"
    version: str = "1"
    kind: object = MULTIPLE_CHOICE
    categories: tuple[str, ...] = ("c0", "c1")

    def load(self, data, split):
        return _examples()

    def format(self, examples, tokenizer=None, chat=False):
        return [e.question + "".join(f"\n{l}. {c}" for l, c in zip(e.letters, e.choices)) + "\nAnswer:" for e in examples]

    def parse(self, examples, completions):
        return [c.strip()[:1] for c in completions]

    def score(self, examples, predictions):
        return [p == e.answer for e, p in zip(examples, predictions)]

    def reward(self, examples, predictions):
        return right_or_wrong(self.score(examples, predictions))


def _cfg(tiny_model_dir, **kw) -> TrainConfig:
    base = dict(task="tiny-mcq", model=str(tiny_model_dir), device="cpu", steps=2, batch_size=8, micro_batch_size=8,
                eval_every=1, val_fraction=0.25, lr=1e-2, grad_clip=0.0, seed=0)
    return TrainConfig(**(base | kw))


def _svf_run(tmp_path, tiny_model_dir, **kw) -> SVFRun:
    r = SVFRun(_cfg(tiny_model_dir, **kw), tmp_path / "run", TinyMCQ())
    r.setup()
    return r


def _letter_probs_by_hand(model, tok, prompt: str, letters) -> torch.Tensor:
    """Softmax over letters of logsumexp over the 'A'/' A' token logits; one unpadded prompt."""
    ids = tok(prompt, return_tensors="pt")["input_ids"]  # (1, T)
    logits = model(input_ids=ids).logits[0, -1]  # (V,)
    per_letter = []
    for letter in letters:
        variants = {tok.encode(t, add_special_tokens=False)[0] for t in (letter, " " + letter)
                    if len(tok.encode(t, add_special_tokens=False)) == 1}
        per_letter.append(torch.logsumexp(logits[sorted(variants)], 0))
    return torch.softmax(torch.stack(per_letter), 0)  # (n_letters,)


def test_exact_objective_matches_formula_and_finite_differences(tiny):
    model, tok = tiny
    svf = attach(model)
    model.double()
    svf.factors = {t: Factors(f.U.double(), f.S.double(), f.V.double()) for t, f in svf.factors.items()}
    svf.track_weight_grads(False)
    task, ex = TinyMCQ(), _examples()[:4]
    items = [rollout.Item(p, letters=e.letters, letter_rewards=tuple(r))
             for p, e, r in zip(task.format(ex), ex, MULTIPLE_CHOICE.letter_rewards(task, ex))]
    ids = rollout.LetterIds(tok)
    g = torch.Generator().manual_seed(0)
    p = {t: (0.1 + 0.5 * torch.randn(f.S.numel(), generator=g, dtype=torch.float64)).requires_grad_() for t, f in svf.factors.items()}

    def loss_at(params, grad: bool):
        with torch.set_grad_enabled(grad), svf.factored({t: torch.sigmoid(v).expand(len(items), -1) for t, v in params.items()}):
            J, _, _ = rollout.mcq_terms(model, tok, items, ids, "exact", None)
            by_hand = []
            for it, e in zip(items, ex):
                probs = _letter_probs_by_hand(model, tok, it.prompt, it.letters)
                R = torch.tensor([1.0 if l == e.answer else -1.0 for l in it.letters], dtype=probs.dtype)
                by_hand.append((probs * R).sum())  # expected reward Σ p(letter)·R(letter)
        return -J.mean(), -torch.stack(by_hand).mean()

    loss, hand = loss_at(p, True)
    # engine returns float32 logits, so the library's loss carries float32 rounding
    torch.testing.assert_close(loss.detach().double(), hand.detach(), rtol=1e-5, atol=1e-6)
    loss.backward()
    direction = {t: torch.randn(v.shape, generator=g, dtype=torch.float64) for t, v in p.items()}
    eps = 1e-3  # central differences: O(eps²) error; smaller eps meets float32 rounding in HF's RoPE tables
    plus = loss_at({t: v.detach() + eps * direction[t] for t, v in p.items()}, False)[1]
    minus = loss_at({t: v.detach() - eps * direction[t] for t, v in p.items()}, False)[1]
    analytic = sum((p[t].grad * direction[t]).sum() for t in p)
    torch.testing.assert_close(analytic, (plus - minus) / (2 * eps), rtol=1e-4, atol=1e-7)


def test_kl_is_zero_at_uniform_z(tiny):
    model, tok = tiny
    svf = attach(model)
    task, ex = TinyMCQ(), _examples()[:4]
    items = [rollout.Item(p, letters=e.letters, letter_rewards=tuple(r),
                          answer_ids=tok.encode(" 12 apples", add_special_tokens=False), reward=1.0)
             for p, e, r in zip(task.format(ex), ex, MULTIPLE_CHOICE.letter_rewards(task, ex))]
    ids = rollout.LetterIds(tok)
    base_mcq = rollout.letter_base(model, tok, items, ids)
    base_gen = rollout.answer_base(model, tok, items)
    z = {t: torch.full_like(f.S, 0.7) for t, f in svf.factors.items()}  # uniform z: W' = W
    with svf.factored({t: v.expand(len(items), -1) for t, v in z.items()}):
        _, kl_mcq, _ = rollout.mcq_terms(model, tok, items, ids, "exact", base_mcq)
        _, kl_gen, _ = rollout.generate_terms(model, tok, items, base_gen)
    assert kl_mcq.abs().max() < 1e-6 and kl_gen.abs().max() < 1e-5
    z = {t: torch.linspace(0.2, 0.9, f.S.numel()) for t, f in svf.factors.items()}  # a real change: KL > 0
    with svf.factored({t: v.expand(len(items), -1) for t, v in z.items()}):
        assert rollout.mcq_terms(model, tok, items, ids, "exact", base_mcq)[1].min() > 0


def _expected_reward(run: SVFRun, examples) -> float:
    items = run.rollouts(0, examples)
    with torch.no_grad(), run.svf.factored({t: z.expand(len(items), -1) for t, z in run.z().items()}):
        return rollout.mcq_terms(run.model, run.tokenizer, items, run.letter_ids, "exact", None)[0].mean().item()


@pytest.mark.parametrize("mode", ["factored", "merged"])
def test_one_step_changes_p_and_raises_expected_reward(tmp_path, tiny_model_dir, mode):
    r = _svf_run(tmp_path, tiny_model_dir, mode=mode, lr=5e-3)
    batch = r.batch_examples(0)
    before_p = {t: v.detach().clone() for t, v in r.p.items()}
    before = _expected_reward(r, batch)
    r.train_step(0)
    after = _expected_reward(r, batch)
    assert any(not torch.equal(before_p[t], r.p[t]) for t in r.p)
    assert after > before


def _grads(tmp_path, tiny_model_dir, name, **kw) -> dict[str, torch.Tensor]:
    r = _svf_run(tmp_path / name, tiny_model_dir, lr=0.0, **kw)  # lr 0: the step leaves p, grads stay readable
    r.train_step(0)
    return {t: v.grad.clone() for t, v in r.p.items()}


def test_micro_batching_gives_the_full_batch_gradient(tmp_path, tiny_model_dir, tiny):
    full = _grads(tmp_path, tiny_model_dir, "full", micro_batch_size=8, mode="factored", sort_micro=False)
    micro = _grads(tmp_path, tiny_model_dir, "micro", micro_batch_size=2)
    merged = _grads(tmp_path, tiny_model_dir, "merged", micro_batch_size=4, mode="merged")
    # independent: -mean_i Σ_letters p_i·R_i, each question alone (no padding), grad by autograd
    r = _svf_run(tmp_path / "ind", tiny_model_dir)
    model, tok = r.model, r.tokenizer
    p = {t: v.detach().clone().requires_grad_() for t, v in r.p.items()}
    batch = r.batch_examples(0)
    with r.svf.factored({t: torch.sigmoid(v)[None] for t, v in p.items()}):
        terms = []
        for e, prompt in zip(batch, r.task.format(batch)):
            probs = _letter_probs_by_hand(model, tok, prompt, e.letters)
            terms.append(sum(pr * (1.0 if l == e.answer else -1.0) for pr, l in zip(probs, e.letters)))
        (-torch.stack(terms).mean()).backward()
    for t in full:
        torch.testing.assert_close(micro[t], full[t], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(merged[t], full[t], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(p[t].grad, full[t], rtol=1e-4, atol=1e-7)


def test_split_is_stratified_seeded_and_disjoint():
    ex = [Example(id=f"{s:02d}-{i:03d}", question="q", answer="A", choices=("x", "y"), subject=f"{s:02d}",
                  category="STEM" if s < 3 else "Other") for s in range(6) for i in range(10 + 5 * s)]
    a = splits.stratified_split(ex, 0.2, 0.1, seed=1)
    assert a == splits.stratified_split(ex, 0.2, 0.1, seed=1)
    assert a["val"] != splits.stratified_split(ex, 0.2, 0.1, seed=2)["val"]
    ids = [{e.id for e in a[p]} for p in splits.PARTS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == {e.id for e in ex}
    for s in range(6):
        n = 10 + 5 * s
        assert sum(e.subject == f"{s:02d}" for e in a["val"]) == round(0.2 * n)
        assert sum(e.subject == f"{s:02d}" for e in a["holdout"]) == round(0.1 * n)
    assert {e.category for e in splits.filter_subset(ex, "category=stem")} == {"STEM"}
    assert {e.subject for e in splits.filter_subset(ex, "subject=01,04")} == {"01", "04"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        splits.filter_subset(ex, "topic=x")
    with pytest.raises(ConfigError, match="selects no example"):
        splits.filter_subset(ex, "category=Humanities")


def test_run_folder_and_split_file(tmp_path, tiny_model_dir):
    r = _svf_run(tmp_path, tiny_model_dir, steps=2, holdout_fraction=0.25, label="demo")
    summary = r.train()
    run = tmp_path / "run"
    assert {"config.yaml", "split.json", "metrics.jsonl", "best", "latest"} <= {p.name for p in run.iterdir()}
    record = splits.load_split(run)
    assert record["counts"] == {"train": 12, "val": 6, "holdout": 6}
    best = Expert.load(run / "best")
    assert best.meta.label == "demo" and best.meta.task == "tiny-mcq" and best.meta.description
    assert best.meta.metrics["best_val"] == summary["best_val"]
    by_id = {e.id: e for e in _examples()}
    saw = [by_id[i] for part in ("train", "val") for i in record["ids"][part]]  # what the run trained and selected on
    for part in ("best", "latest"):
        assert torch.equal(Expert.load(run / part).seen, seen.keys(saw)), part
    assert not set(seen.keys(by_id[i] for i in record["ids"]["holdout"]).tolist()) & set(best.seen.tolist())
    assert best.meta.metrics["step"] == summary["best_step"]  # best/ names the step its weights come from
    assert yaml.safe_load((run / "config.yaml").read_text())["steps"] == 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if "loss" in x] == [1, 2] and sum("val_acc" in x for x in rows) == 3


def test_checkpoint_write_is_atomic(tmp_path, tiny_model_dir, monkeypatch):
    r = _svf_run(tmp_path, tiny_model_dir)
    r.save_checkpoint("latest")
    p0 = load_file(tmp_path / "run" / "latest" / "expert.safetensors")
    r.train_step(0)
    r.step = 1

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("transformer_squared.training.train.save_trainer_state", crash)
    with pytest.raises(OSError):
        r.save_checkpoint("latest")
    latest = tmp_path / "run" / "latest"
    assert sorted(p.name for p in latest.iterdir()) == ["expert.json", "expert.safetensors", "seen.safetensors",
                                                         STATE_META, "trainer_state.safetensors"]
    assert all(torch.equal(Expert.load(latest).p[t], p0[t]) for t in p0)
    assert load_trainer_state(latest, r.optimizer, r.names)["step"] == 0
    # a kill between the two renames of a swap: the old folder comes back on the next read
    os.replace(latest, tmp_path / "run" / ".latest.old")
    monkeypatch.undo()
    r2 = SVFRun(r.cfg, tmp_path / "run", TinyMCQ())
    r2.setup(resume=True)
    assert r2.step == 0 and latest.is_dir()


def test_config_checks_and_flags(tmp_path):
    cfg = load_config(TrainConfig, flags=["--batch-size", "32", "--kl", "0.1", "--subset", "category=STEM"])
    assert (cfg.batch_size, cfg.kl, cfg.subset) == (32, 0.1, "category=STEM")
    with pytest.raises(ConfigError, match="micro_batch_size 64 > batch_size 32 × samples_per_prompt 1"):
        replace(cfg, micro_batch_size=64)
    assert replace(cfg, micro_batch_size=64, samples_per_prompt=2).micro_batch_size == 64  # items: prompts × samples
    with pytest.raises(ConfigError, match="unknown key 'lr_rate'"):
        load_config(TrainConfig, flags=["--lr-rate", "1"])


def test_every_shipped_recipe_loads():
    from transformer_squared.recipe.config import is_recipe

    files = sorted(f for f in (REPO / "recipes").glob("*.yaml") if not is_recipe(f))  # pipelines: tests/test_recipe.py
    assert files
    for path in files:
        assert path.read_text(encoding="utf-8").startswith("#"), f"{path} must open with a comment"
        load_config(TrainConfig, path)


@dataclass
class TinyGen:
    """A generative Task: the answer is the question's first word; reward by exact match of the completion's."""

    name: str = "tiny-gen"
    version: str = "1"
    kind: object = GENERATIVE
    categories: tuple[str, ...] = ()

    def load(self, data, split):
        return [Example(id=f"g{i}", question=f"{w} is the word to repeat.", answer=w, subject="s")
                for i, w in enumerate(["apple", "river", "stone", "cloud", "green", "table", "seven", "happy"])]

    def format(self, examples, tokenizer=None, chat=False):
        return [f"Repeat the first word. {e.question}\nWord:" for e in examples]

    def parse(self, examples, completions):
        return [(c.split() or [""])[0] for c in completions]

    def score(self, examples, predictions):
        return [p == e.answer for e, p in zip(examples, predictions)]

    def reward(self, examples, predictions):
        return right_or_wrong(self.score(examples, predictions))


@pytest.mark.parametrize("mode", ["factored", "merged"])
def test_generative_rollouts_step_with_kl(tmp_path, tiny_model_dir, mode):
    cfg = _cfg(tiny_model_dir, task="tiny-gen", mode=mode, kl=0.1, batch_size=4, micro_batch_size=2, val_fraction=0.25,
               max_new_tokens=4, temperature=1.0, samples_per_prompt=2)
    r = SVFRun(cfg, tmp_path / "run", TinyGen())
    r.setup()
    before = {t: v.detach().clone() for t, v in r.p.items()}
    stats = r.train_step(0)
    assert r.objective.name == "rollouts" and all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert stats["reward"] == -1.0  # a random tiny model never repeats the word: every rollout is wrong
    assert stats["kl"] >= 0 and any(not torch.equal(before[t], r.p[t]) for t in r.p)
    with pytest.raises(ConfigError, match="needs a multiple-choice task"):
        SVFRun(replace(cfg, objective="exact"), tmp_path / "x", TinyGen()).setup()


CODE_ANSWERS = {  # what TinyCode's "model" writes for each kind of question, whatever it generated
    "right": "def inc(x):\n    return x + 1\n",
    "wrong": "def inc(x):\n    return x\n",
    "exit": "def inc(x):\n    return x\nimport sys; sys.exit(0)\n",
    "os_exit": "def inc(x):\n    return x\nimport os; os._exit(0)\n",
}


@dataclass
class TinyCode(CodeTask):
    """A code Task whose answers are fixed by the question: right, wrong, or ending before the checks."""

    name: str = "tiny-code"
    version: str = "1"
    kind: object = CODE
    categories: tuple[str, ...] = ()

    def load(self, data, split):
        return [Example(id=f"c{i}", question=f"Write inc ({i}).", answer=list(CODE_ANSWERS)[i % 4], subject="s")
                for i in range(8)]

    def format(self, examples, tokenizer=None, chat=False):
        return [e.question for e in examples]

    def parse(self, examples, completions):
        return [CODE_ANSWERS[e.answer] for e in examples]

    def programs(self, examples, predictions):
        return [f"{p}\nassert inc(1) == 2\n" for p in predictions]


@pytest.mark.needs_bwrap
def test_code_rollouts_log_the_share_that_ended_before_the_checks(tmp_path, tiny_model_dir):
    """Issue 19: a forged pass was a +1 reward; now it is −1 and metrics.jsonl shows how often rollouts try it."""
    cfg = _cfg(tiny_model_dir, task="tiny-code", steps=1, batch_size=4, micro_batch_size=4, val_fraction=0.25,
               max_new_tokens=2, temperature=1.0, samples_per_prompt=2, eval_every=1)
    r = SVFRun(cfg, tmp_path / "run", TinyCode())
    r.setup()
    batch = r.batch_examples(0)
    r.train()
    (row,) = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert row["early_exit"] == sum(e.answer in ("exit", "os_exit") for e in batch) / len(batch)
    assert row["reward"] == sum(1 if e.answer == "right" else -1 for e in batch) / len(batch)


def test_sampled_letters_gradient_averages_to_the_exact_gradient(tmp_path, tiny_model_dir):
    """REINFORCE at temperature 1 is unbiased: E_k~π[R(k)·∇log π(k)] = ∇Σ_k π(k)·R(k), the exact objective's gradient.

    Its error shrinks like 1/sqrt(S) (measured on this model: 0.53 at S = 4, 0.028 at 2,000, 0.012 at 20,000).
    """
    exact = _grads(tmp_path, tiny_model_dir, "exact", objective="exact")
    sampled = _grads(tmp_path, tiny_model_dir, "sampled", objective="sample", temperature=1.0,
                     samples_per_prompt=20_000)
    norm = lambda g: sum(v.double().square().sum() for v in g.values()).sqrt()  # noqa: E731
    rel = norm({t: sampled[t] - exact[t] for t in exact}) / norm(exact)
    assert norm(exact) > 0 and rel < 0.03, float(rel)
    with pytest.raises(ConfigError, match="temperature > 0"):
        SVFRun(_cfg(tiny_model_dir, objective="sample"), tmp_path / "y", TinyMCQ()).setup()


def test_missing_logger_is_a_config_error(tmp_path, monkeypatch):
    from transformer_squared.training.sinks import MetricsSink

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ConfigError, match="pip install 'transformer-squared\\[wandb\\]'"):
        MetricsSink("wandb", tmp_path, {})
    MetricsSink("none", tmp_path, {}).close()


def test_cli_reports_config_errors_in_one_line(tmp_path, tiny_model_dir, capsys):
    from transformer_squared.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--task", "mcq", "--model", str(tiny_model_dir), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err == "error: task 'mcq' needs data: a local JSONL file or folder, or a Hugging Face dataset id\n"
    assert not (tmp_path / "r").exists()  # nothing written when the arguments cannot work


@pytest.mark.parametrize("kw", [dict(val_fraction=0.0), dict(val_fraction=0.1)])
def test_a_run_without_validation_questions_is_refused_up_front(tmp_path, tiny_model_dir, kw, monkeypatch):
    """Without validation best/ would silently stay the untrained expert (acc > NaN is never true)."""
    monkeypatch.setattr("transformer_squared.training.train.load_model",
                        lambda *a, **k: pytest.fail("model loaded before the split was checked"))
    task = TinyMCQ()
    if kw["val_fraction"] == 0.1:  # strata of 3 questions: round(3 × 0.1) = 0 in every subject
        task.load = lambda data, split: _examples(9)
    with pytest.raises(ConfigError, match=f"val_fraction {kw['val_fraction']} leaves no validation questions"):
        SVFRun(_cfg(tiny_model_dir, **kw), tmp_path / "run", task).setup()
    assert not (tmp_path / "run").exists()


def _mlp_calls(r) -> list[int]:
    """Calls into the first decoder layer's MLP (a submodule: a checkpointed layer recomputes it; a pre-hook,
    because the recompute stops early, inside the MLP, once it has every tensor the backward needs)."""
    calls = [0]
    r.model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("mode", ["factored", "merged"])
def test_gradient_checkpointing_recomputes_and_gives_the_same_gradient(tmp_path, tiny_model_dir, mode):
    grads, calls = {}, {}
    for on in (False, True):
        r = _svf_run(tmp_path / str(on), tiny_model_dir, lr=0.0, micro_batch_size=4, kl=0.1, mode=mode,
                    gradient_checkpointing=on)
        n = _mlp_calls(r)
        r.train_step(0)
        grads[on], calls[on] = {t: v.grad.clone() for t, v in r.p.items()}, n[0]
        assert not r.model.model.layers[0].self_attn.training  # only the layer's own flag is on: no dropout
        assert not r.model.model.layers[0].training  # on only around the gradient passes, off after the step
    assert calls[True] == calls[False] + 2  # one recompute per micro-batch (8 prompts / 4); the KL's no-grad pass: none
    for t in grads[False]:
        torch.testing.assert_close(grads[True][t], grads[False][t], rtol=1e-5, atol=1e-8)
    assert any(g.abs().sum() > 0 for g in grads[True].values())


@dataclass
class GradedGen(TinyGen):
    """TinyGen with graded rewards: every answer to an even-numbered question earns 0.5, to an odd one −0.25."""

    name: str = "graded-gen"

    def reward(self, examples, predictions):
        return [0.5 if int(e.id[1:]) % 2 == 0 else -0.25 for e in examples]


def _answer_logprob_by_hand(model, tok, prompt: str, answer_ids: list[int]) -> float:
    """Σ_t log π(answer token t | prompt, earlier answer tokens), one unpadded sequence."""
    from transformer_squared.models.engine import tokenize

    p = tokenize(tok, [prompt])[0]
    ids = torch.tensor([p + answer_ids])  # (1, T)
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)  # (T, V)
    return sum(float(logp[len(p) - 1 + j, a]) for j, a in enumerate(answer_ids))


def test_graded_rewards_enter_the_rollout_loss_exactly(tmp_path, tiny_model_dir):
    """loss = −(1/n) Σ_i R_i · Σ_t log π'(a_it) with the task's float rewards (fails with ±1 rewards)."""
    cfg = _cfg(tiny_model_dir, task="graded-gen", batch_size=4, micro_batch_size=2, val_fraction=0.25, max_new_tokens=3,
               temperature=0.0)
    r = SVFRun(cfg, tmp_path / "run", GradedGen())
    r.setup()
    examples = r.batch_examples(0)
    items = r.rollouts(0, examples)  # greedy: the same answers train_step will roll out
    R = [0.5 if int(e.id[1:]) % 2 == 0 else -0.25 for e in examples]
    assert [it.reward for it in items] == R and len(set(R)) == 2
    with torch.no_grad(), r.svf.merged({t: z.detach() for t, z in r.z().items()}):
        logp = [_answer_logprob_by_hand(r.model, r.tokenizer, it.prompt, it.answer_ids) for it in items]
    stats = r.train_step(0)
    assert stats["reward"] == pytest.approx(sum(R) / len(R))
    # factored training pass vs merged weights by hand: float32 rounding only
    assert stats["loss"] == pytest.approx(-sum(x * y for x, y in zip(R, logp)) / len(items), rel=1e-4)


@dataclass
class NearMissMCQ(TinyMCQ):
    """TinyMCQ with a graded reward: the gold letter 1, the letter after it 0.5, the others −1."""

    name: str = "near-miss"

    def reward(self, examples, predictions):
        out = []
        for e, p in zip(examples, predictions):
            near = e.letters[(e.letters.index(e.answer) + 1) % len(e.letters)]
            out.append(1.0 if p == e.answer else 0.5 if p == near else -1.0)
        return out


def test_graded_letter_rewards_enter_the_exact_objective(tmp_path, tiny_model_dir):
    """Exact objective with graded rewards: J = Σ_letters π'(letter)·R(letter), R from the task, per item."""
    r = SVFRun(_cfg(tiny_model_dir, task="near-miss"), tmp_path / "run", NearMissMCQ())
    r.setup()
    examples = r.batch_examples(0)[:4]
    items = r.rollouts(0, examples)
    with torch.no_grad(), r.svf.factored({t: z.expand(len(items), -1) for t, z in r.z().items()}):
        J, _, reward = r.terms(items, None, torch.Generator())
    with torch.no_grad(), r.svf.merged({t: z.detach() for t, z in r.z().items()}):
        for i, (it, e) in enumerate(zip(items, examples)):
            gold = LETTERS.index(e.answer)
            R = torch.tensor([1.0 if k == gold else 0.5 if k == (gold + 1) % 3 else -1.0 for k in range(3)])
            probs = _letter_probs_by_hand(r.model, r.tokenizer, it.prompt, it.letters)
            torch.testing.assert_close(J[i], (probs * R).sum(), rtol=1e-4, atol=1e-6)  # float32, factored vs merged
    torch.testing.assert_close(reward, J)  # the exact objective reports its expected reward


def test_step_diagnostics_match_their_formulas(tmp_path, tiny_model_dir):
    """reward_sd, right and z_dist (the evidence diagnostics) against formulas on the step's own items."""
    r = _svf_run(tmp_path, tiny_model_dir, lr=5e-3, micro_batch_size=3)  # three micro-batches of one batch
    items = r.rollouts(0, r.batch_examples(0))
    z_before = {t: z.detach().clone() for t, z in r.z().items()}
    with torch.no_grad(), r.svf.factored({t: z.expand(len(items), -1) for t, z in r.z().items()}):
        rewards = rollout.mcq_terms(r.model, r.tokenizer, items, r.letter_ids, "exact", None)[2]
    stats = r.train_step(0)
    assert stats["reward"] == pytest.approx(rewards.mean().item(), abs=1e-5)
    assert stats["reward_sd"] == pytest.approx(rewards.std(unbiased=False).item(), abs=1e-4)
    assert stats["right"] == pytest.approx((rewards > 0).float().mean().item())
    moved = sum(((r.z()[t].detach() - r.z0[t]) ** 2).sum() for t in r.p) ** 0.5
    assert stats["z_dist"] == pytest.approx(float(moved), rel=1e-5) and stats["z_dist"] > 0
    assert all(torch.equal(z_before[t], r.z0[t]) for t in r.p)  # step 0 starts from z₀


def test_group_advantages_are_reward_minus_the_prompts_mean():
    items = [rollout.Item("p", reward=r) for r in (1.0, -1.0, -1.0, -1.0, 0.5, 0.5)]
    rollout.group_advantages(items, 2)
    assert [it.advantage for it in items] == [1.0, -1.0, 0.0, 0.0, 0.0, 0.0]


def test_group_baseline_weights_the_rollout_loss_and_ignores_agreeing_samples(tmp_path, tiny_model_dir):
    """With the group baseline, loss = −(1/n) Σ_i (R_i − mean R of its prompt) · Σ_t log π'(a_it): when every sample
    of every prompt is wrong (the tiny model never repeats the word) the loss is 0, zero_advantage is 1 and z
    does not move; without it (the paper's R) the same step moves z."""
    kw = dict(task="tiny-gen", batch_size=4, micro_batch_size=4, val_fraction=0.25, max_new_tokens=3, temperature=1.0,
              samples_per_prompt=2, grad_clip=0.0)
    moved = {}
    for baseline in ("group", "none"):
        r = SVFRun(_cfg(tiny_model_dir, baseline=baseline, **kw), tmp_path / baseline, TinyGen())
        r.setup()
        before = {t: v.detach().clone() for t, v in r.p.items()}
        stats = r.train_step(0)
        assert stats["reward"] == -1.0
        moved[baseline] = any(not torch.equal(before[t], r.p[t]) for t in r.p)
        if baseline == "group":
            assert stats["zero_advantage"] == 1.0 and stats["loss"] == 0.0
        else:
            assert "zero_advantage" not in stats and stats["loss"] != 0.0
    assert moved == {"group": False, "none": True}
    with pytest.raises(ConfigError, match="samples_per_prompt ≥ 2"):
        _cfg(tiny_model_dir, baseline="group", task="tiny-gen", temperature=1.0)
    with pytest.raises(ConfigError, match="temperature > 0"):
        _cfg(tiny_model_dir, baseline="group", task="tiny-gen", samples_per_prompt=2)


def test_group_baseline_loss_matches_the_formula(tmp_path, tiny_model_dir):
    """Each advantage is the reward minus its prompt's mean, and J = A · Σ_t log π'(a_t) with A, not R (advantages set
    by hand here, as if the first prompt's two samples disagreed), while the metrics still get R."""
    cfg = _cfg(tiny_model_dir, task="graded-gen", batch_size=4, micro_batch_size=2, val_fraction=0.25, max_new_tokens=3,
               temperature=1.0, samples_per_prompt=2, baseline="group")
    r = SVFRun(cfg, tmp_path / "run", GradedGen())
    r.setup()
    items = r.rollouts(0, r.batch_examples(0))
    for k in range(0, len(items), 2):
        assert items[k].advantage == pytest.approx(items[k].reward - (items[k].reward + items[k + 1].reward) / 2)
    items[0].advantage, items[1].advantage = 1.0, -1.0  # as if the first prompt's samples disagreed
    with torch.no_grad(), r.svf.merged({t: z.detach() for t, z in r.z().items()}):
        logp = [_answer_logprob_by_hand(r.model, r.tokenizer, it.prompt, it.answer_ids) for it in items[:2]]
        J, _, R = rollout.generate_terms(r.model, r.tokenizer, items[:2], None)
    assert J.tolist() == pytest.approx([logp[0], -logp[1]], rel=1e-4)
    assert R.tolist() == [items[0].reward, items[1].reward]  # the metrics still report the rewards

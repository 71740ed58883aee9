"""PEFT baselines on a tiny random Llama: the answer-only loss, a run that changes the adapter and is scored
by `t2 eval --lora` (checked against a direct PEFT forward pass), bit-identical resume, presets."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from transformer_squared.baselines import peft_train
from transformer_squared.baselines.peft_train import BaselineConfig, BaselineRun, resolve
from transformer_squared.cli import main
from transformer_squared.errors import ConfigError
from transformer_squared.models.load import load_model
from transformer_squared.tasks import get_task
from transformer_squared.training import splits

from vmlu_files import write_vmlu


@pytest.fixture(scope="module")
def vmlu(tmp_path_factory):
    return write_vmlu(tmp_path_factory.mktemp("vmlu") / "vmlu", per_subject=4, distinct_ids=True)


def _cfg(model_dir, data, **kw) -> BaselineConfig:
    base = dict(task="vmlu", data=str(data), model=str(model_dir), device="cpu", steps=3, batch_size=8,
                micro_batch_size=4, eval_every=2, max_val=8, lr=2e-2, seed=1, val_fraction=0.25)
    return BaselineConfig(**(base | kw))


def _answer_nll_by_hand(model, tok, prompts: list[str], letters: list[str]) -> float:
    """Mean over prompts of −log p(" X" | prompt), one unpadded prompt at a time."""
    total = 0.0
    for prompt, letter in zip(prompts, letters):
        p_ids = tok(prompt)["input_ids"]
        a_ids = tok(" " + letter, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + a_ids])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)  # (T, V)
        total -= sum(logp[len(p_ids) - 1 + j, t].item() for j, t in enumerate(a_ids))
    return total / len(prompts)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_run_changes_adapter_and_eval_lora_scores_it(tmp_path, tiny_model_dir, vmlu, method, capsys):
    out = tmp_path / method
    main(["baseline", method, "--model", str(tiny_model_dir), "--task", "vmlu", "--data", str(vmlu), "--out", str(out),
          "--steps", "3", "--device", "cpu", "--lr", "0.02", "--eval-every", "2", "--micro-batch-size", "4",
          "--seed", "1", "--max-val", "8", "--holdout-fraction", "0.3"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in train_rows)
    assert [r["lr"] for r in train_rows] == pytest.approx([0.02, 0.02 * 2 / 3, 0.02 / 3])  # linear decay to 0

    # step 1 starts from an adapter that is the identity (LoRA B = 0, IA3 scales = 1): its loss is the base
    # model's answer-only next-token loss on the first batch
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    task = get_task("vmlu")
    record = splits.load_split(out)
    train = splits.load_part(task, str(vmlu), record, "train")
    batch = splits.batch_of(train, 8, 1, 0)
    with torch.no_grad():
        expected = _answer_nll_by_hand(model, tok, task.format(batch, tok), [e.answer for e in batch])
    assert train_rows[0]["loss"] == pytest.approx(expected, rel=1e-4)

    weights = load_file(out / "latest" / "adapter_model.safetensors")
    if method == "lora":
        assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in weights.items())
    else:
        assert any(not torch.equal(v, torch.ones_like(v)) for v in weights.values())
    meta = json.loads((out / "best" / "baseline.json").read_text())
    assert meta["split"]["counts"]["train"] == len(train) and meta["label"] == {"lora": "LoRA", "ia3": "IA3"}[method]

    res_path = tmp_path / "r.json"
    main(["eval", "--model", str(tiny_model_dir), "--task", "vmlu", "--data", str(vmlu), "--split", "valid",
          "--lora", str(out / "latest"), "--protocol", "letter", "--device", "cpu", "--out", str(res_path)])
    res = json.loads(res_path.read_text())
    assert res["label"] == meta["label"] and res["adapter"]["method"] == method
    peft_model = PeftModel.from_pretrained(model, str(out / "latest")).eval()
    used = set(record["ids"]["train"]) | set(record["ids"]["val"])  # seen in training: left out automatically
    examples = [e for e in task.load(str(vmlu), "valid") if e.id not in used]
    assert sorted(res["seen"]["excluded_ids"]) == sorted(e.id for e in task.load(str(vmlu), "valid") if e.id in used)
    by_id = {r["id"]: r for r in res["predictions"]}
    hits = 0
    with torch.no_grad():
        for e, prompt in zip(examples, task.format(examples, tok)):
            ids = torch.tensor([tok(prompt)["input_ids"]])
            logits = peft_model(input_ids=ids).logits[0, -1]  # (V,)
            per_letter = [torch.logsumexp(logits[[tok.encode(v, add_special_tokens=False)[0] for v in (x, " " + x)]], 0)
                          for x in e.letters]
            pred = e.letters[int(torch.stack(per_letter).argmax())]
            assert by_id[e.id]["prediction"]["letter"] == pred
            hits += pred == e.answer
    assert res["metrics"]["letter"]["n"] == len(examples) > 0 and len(by_id) == len(examples)
    assert res["metrics"]["letter"]["n_correct"] == hits


def test_resume_after_interruption_is_bit_identical(tmp_path, tiny_model_dir, vmlu, monkeypatch):
    cfg = _cfg(tiny_model_dir, vmlu, steps=3)
    peft_train.run(cfg, tmp_path / "a")

    real_save = BaselineRun.save_checkpoint

    def save_then_die(self, kind="latest"):
        real_save(self, kind)
        if kind == "latest" and self.step == 2:
            raise KeyboardInterrupt  # as if killed right after step 2's checkpoint

    monkeypatch.setattr(BaselineRun, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        peft_train.run(cfg, tmp_path / "b")
    monkeypatch.undo()
    peft_train.run(cfg, tmp_path / "b", resume=True)
    for part in ("latest", "best"):
        a = load_file(tmp_path / "a" / part / "adapter_model.safetensors")
        b = load_file(tmp_path / "b" / part / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k != "seconds"}  # noqa: E731
                       for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "a") == strip(tmp_path / "b")


def test_presets_and_config_errors(tmp_path, tiny):
    model, _ = tiny
    vmlu_cfg, paper_cfg, ia3_cfg = (resolve(BaselineConfig(preset=p, method=m))
                                    for p, m in (("vmlu", "lora"), ("paper", "lora"), ("vmlu", "ia3")))
    assert (vmlu_cfg.r, vmlu_cfg.alpha, vmlu_cfg.dropout, vmlu_cfg.lr, vmlu_cfg.epochs) == (8, 32, 0.1, 2e-4, 5)
    assert (paper_cfg.r, paper_cfg.alpha, paper_cfg.dropout) == (16, 32, 0.05) and ia3_cfg.lr == peft_train.IA3_LR
    assert resolve(BaselineConfig(r=4, lr=1e-3)).r == 4 and resolve(BaselineConfig(lr=1e-3, method="ia3")).lr == 1e-3
    assert peft_train.target_names(model, "attn+mlp") == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    assert peft_train.target_names(model, paper_cfg.targets) == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match="no Linear named c_attn"):
        peft_train.target_names(model, "c_attn")
    with pytest.raises(ConfigError, match="micro_batch_size 16 > batch_size 8"):
        BaselineConfig(micro_batch_size=16)
    with pytest.raises(SystemExit) as exc:
        main(["baseline", "lora", "--method", "ia3", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2


def test_gradient_checkpointing_recomputes_and_gives_the_same_step(tmp_path, tiny_model_dir, vmlu):
    weights, calls = {}, {}
    for on in (False, True):
        # the preset's dropout 0.1: the recompute replays the same masks (checkpoint keeps the RNG state)
        run = BaselineRun(_cfg(tiny_model_dir, vmlu, gradient_checkpointing=on), tmp_path / str(on))
        run.setup()
        layer = run.model.get_base_model().model.layers[0]
        n = [0]
        layer.mlp.register_forward_pre_hook(lambda *_: n.__setitem__(0, n[0] + 1))  # pre: the recompute stops early
        run.train_step(0)
        weights[on], calls[on] = {k: p.detach().clone() for k, p in zip(run.names, run.params)}, n[0]
        assert not run.model.training  # back in eval mode after the step
        run.cleanup()
    assert calls[True] == calls[False] + 2  # one recompute per micro-batch (8 questions / 4)
    assert weights[True].keys() == weights[False].keys()
    for k in weights[False]:
        torch.testing.assert_close(weights[True][k], weights[False][k], rtol=1e-5, atol=1e-7)

"""The bad-input matrix: each case is a real mistake fed to `t2` in-process (`cli.main`).

Every case must exit with code 2 and exactly one line on stderr that names the culprit (a file, flag or
value), with no traceback; no file that existed before may change (SHA-256 and mtime) and no new file may
appear. Cases marked `early` must fail before any model weights are loaded (a tripwire replaces
`from_pretrained`): the arguments already show that the command cannot finish.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from transformer_squared.cli import main

from vmlu_files import write_vmlu

Case = Callable[["Ctx"], tuple[list[str], str]]
CASES: dict[str, tuple[Case, bool]] = {}


def case(name: str, early: bool = True) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        assert name not in CASES
        CASES[name] = (fn, early)
        return fn

    return register


@dataclass
class WS:
    """Shared, read-only workspace: the tiny model, its SVD cache, VMLU files, an expert, a results file."""

    root: Path
    model: Path
    home: Path  # T2_HOME holding the tiny model's SVD cache
    vmlu: Path
    expert: Path
    results: Path  # an existing `--out` file every eval case points at


@dataclass
class Ctx:
    ws: WS
    tmp: Path
    readonly: Callable[[Path], Path]

    def eval(self, *extra: str, data: Path | None = None) -> list[str]:
        return ["eval", "--model", str(self.ws.model), "--task", "vmlu", "--data", str(data or self.ws.vmlu),
                "--split", "valid", "--device", "cpu", "--out", str(self.ws.results), *extra]

    def vmlu(self, edit: Callable[[list[dict]], list]) -> Path:
        """A copy of the VMLU folder whose valid.jsonl rows went through `edit` (str rows are written raw)."""
        folder = Path(shutil.copytree(self.ws.vmlu, self.tmp / "vmlu"))
        rows = [json.loads(x) for x in (folder / "valid.jsonl").read_text(encoding="utf-8").splitlines()]
        lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in edit(rows)]
        (folder / "valid.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        return folder

    def expert(self, name: str = "e") -> Path:
        return Path(shutil.copytree(self.ws.expert, self.tmp / name))

    def mcq(self, n: int = 12) -> Path:
        path = self.tmp / "mcq.jsonl"
        rows = [{"id": f"q{i}", "question": f"What is {i} + 1?", "choices": [str(i), str(i + 1), str(i + 2)],
                 "answer": "B", "subject": f"s{i % 3}"} for i in range(n)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    def train(self, *extra: str) -> list[str]:
        return ["train", "--task", "mcq", "--data", str(self.mcq()), "--model", str(self.ws.model),
                "--out", str(self.tmp / "run"), "--steps", "1", "--batch-size", "4", "--micro-batch-size", "2",
                "--device", "cpu", *extra]


def _meta_edit(folder: Path, **changes) -> None:
    path = folder / "expert.json"
    meta = json.loads(path.read_text(encoding="utf-8")) | changes
    path.write_text(json.dumps(meta), encoding="utf-8")


def _tensor_edit(folder: Path, fn: Callable[[dict], dict]) -> None:
    """Rewrite expert.safetensors through `fn` and record its new checksum (a consistent but bad expert)."""
    path = folder / "expert.safetensors"
    save_file(fn(load_file(path)), path)
    _meta_edit(folder, tensors_sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def _first_value(value: float) -> Callable[[dict], dict]:
    def fn(t: dict) -> dict:
        name = sorted(t)[0]
        t[name] = t[name].clone()
        t[name][0] = value
        return t

    return fn


# ---- data ---------------------------------------------------------------------------------------
@case("malformed JSON names file and line")
def _(c):
    d = c.vmlu(lambda rows: [rows[0], '{"id": "01-0002", oops', *rows[2:]])
    return c.eval(data=d), f"{d / 'valid.jsonl'}:2: invalid JSON"


@case("a row that is no JSON object")
def _(c):
    d = c.vmlu(lambda rows: [rows[0], "[1, 2]", *rows[2:]])
    return c.eval(data=d), f"{d / 'valid.jsonl'}:2: expected a JSON object"


@case("missing field")
def _(c):
    d = c.vmlu(lambda rows: rows[:2] + [{k: v for k, v in rows[2].items() if k != "question"}] + rows[3:])
    return c.eval(data=d), f"{d / 'valid.jsonl'}:3: missing field 'question'"


@case("field of the wrong type")
def _(c):
    d = c.vmlu(lambda rows: [rows[0] | {"question": 123}, *rows[1:]])
    return c.eval(data=d), f"{d / 'valid.jsonl'}:1: field 'question' must be str"


@case("answer outside the choices")
def _(c):
    d = c.vmlu(lambda rows: [rows[0] | {"answer": "E"}, *rows[1:]])  # row 1 has three choices
    return c.eval(data=d), f"{d / 'valid.jsonl'}:1: answer 'E' is not among the 3 choices"


@case("empty choice list")
def _(c):
    d = c.vmlu(lambda rows: [rows[0] | {"choices": []}, *rows[1:]])
    return c.eval(data=d), f"{d / 'valid.jsonl'}:1: empty choice list"


@case("empty file")
def _(c):
    d = c.vmlu(lambda rows: [])
    return c.eval(data=d), f"{d / 'valid.jsonl'}: no rows"


@case("duplicate ids")
def _(c):
    d = c.vmlu(lambda rows: rows[:4] + [rows[4] | {"id": rows[0]["id"]}] + rows[5:])
    return c.eval(data=d), f"{d / 'valid.jsonl'}:5: duplicate id '{'01-0001'}'"


@case("unknown subject id")
def _(c):
    d = c.vmlu(lambda rows: [rows[0] | {"id": "99-0001"}, *rows[1:]])
    return c.eval(data=d), "id '99-0001' has unknown subject '99'"


@case("invalid UTF-8")
def _(c):
    d = c.vmlu(lambda rows: rows)
    (d / "valid.jsonl").write_bytes(b'{"id": "01-0001", "question": "\xff\xfe"}\n')
    return c.eval(data=d), f"{d / 'valid.jsonl'}: cannot read"


@case("data folder that does not exist")
def _(c):
    return c.eval(data=c.tmp / "nowhere"), f"{c.tmp / 'nowhere'}: no such file or folder"


@case("split without a file")
def _(c):
    return c.eval("--split", "train"), "no file for split 'train'"


@case("mcq answer index out of range")
def _(c):
    path = c.tmp / "q.jsonl"
    path.write_text(json.dumps({"question": "2 + 2?", "choices": ["3", "4", "5"], "answer": 7}) + "\n", "utf-8")
    return ["eval", "--model", str(c.ws.model), "--task", "mcq", "--data", str(path), "--out",
            str(c.ws.results)], f"{path}:1: answer 7 is not among the 3 choices"


@case("unknown task")
def _(c):
    args = c.eval()
    args[args.index("vmlu")] = "vmlux"
    return args, "unknown task 'vmlux' (did you mean 'vmlu'?)"


@case("subset that selects nothing")
def _(c):
    return c.eval("--subset", "category=Nope"), "--subset 'category=Nope' selects no example"


@case("subset of the wrong form")
def _(c):
    return c.eval("--subset", "topic"), "--subset 'topic': expected KEY=VALUE"


# ---- model --------------------------------------------------------------------------------------
@case("unknown model folder")
def _(c):
    args = c.eval()
    args[args.index(str(c.ws.model))] = str(c.tmp / "nope")
    return args, f"{c.tmp / 'nope'}: no such model folder"


@case("hub id while offline")
def _(c):
    os.environ["HF_HUB_OFFLINE"] = "1"  # restored by the test's monkeypatch
    args = c.eval()
    args[args.index(str(c.ws.model))] = "t2-test-org/no-such-model"
    return args, "model 't2-test-org/no-such-model': not a local folder"


@case("folder that holds no model")
def _(c):
    (c.tmp / "empty").mkdir()
    args = c.eval()
    args[args.index(str(c.ws.model))] = str(c.tmp / "empty")
    return args, f"{c.tmp / 'empty'}: not a loadable Hugging Face model folder"


@case("unknown dtype")
def _(c):
    return c.eval("--dtype", "float8"), "--dtype 'float8': choose one of"


@case("unknown device")
def _(c):
    return c.eval("--device", "gpu0"), "--device 'gpu0': not a torch device"


@case("prompt longer than the context", early=False)
def _(c):
    d = c.vmlu(lambda rows: rows[:6] + [rows[6] | {"question": "từ " * 1500}] + rows[7:])
    return c.eval(data=d), "question 28-0001: "


# ---- experts ------------------------------------------------------------------------------------
@case("expert folder that does not exist")
def _(c):
    return c.eval("--expert", str(c.tmp / "none")), f"{c.tmp / 'none' / 'expert.json'}: missing"


@case("expert.json that is not JSON")
def _(c):
    e = c.expert()
    (e / "expert.json").write_text("{oops", encoding="utf-8")
    return c.eval("--expert", str(e)), f"{e / 'expert.json'}: invalid JSON"


@case("truncated expert safetensors")
def _(c):
    e = c.expert()
    data = (e / "expert.safetensors").read_bytes()
    (e / "expert.safetensors").write_bytes(data[: len(data) // 2])
    return c.eval("--expert", str(e)), f"{e / 'expert.safetensors'}: does not match expert.json"


@case("corrupt safetensors in an expert without checksum")
def _(c):
    e = c.expert()
    meta = json.loads((e / "expert.json").read_text(encoding="utf-8"))
    del meta["tensors_sha256"]
    (e / "expert.json").write_text(json.dumps(meta), encoding="utf-8")
    (e / "expert.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    return c.eval("--expert", str(e)), f"{e / 'expert.safetensors'}: not a readable safetensors file"


@case("NaN in an expert")
def _(c):
    e = c.expert()
    _tensor_edit(e, _first_value(float("nan")))
    return c.eval("--expert", str(e)), "must be a finite float vector"


@case("inf in an expert")
def _(c):
    e = c.expert()
    _tensor_edit(e, _first_value(float("inf")))
    return c.eval("--expert", str(e)), "must be a finite float vector"


@case("wrong target names", early=False)
def _(c):
    e = c.expert()
    rename = lambda n: n.replace("up_proj", "upp_proj")  # noqa: E731
    _tensor_edit(e, lambda t: {rename(k): v for k, v in t.items()})
    targets = json.loads((e / "expert.json").read_text(encoding="utf-8"))["targets"]
    _meta_edit(e, targets=[rename(t) for t in targets])
    return c.eval("--expert", str(e)), "adapts 'model.layers.0.mlp.upp_proj', which is no Linear layer"


@case("expert vector of the wrong length", early=False)
def _(c):
    e = c.expert()
    _tensor_edit(e, lambda t: {k: (v[:-1] if i == 0 else v) for i, (k, v) in enumerate(sorted(t.items()))})
    return c.eval("--expert", str(e)), "values, the base weight's rank is"


@case("expert for another base model", early=False)
def _(c):
    e = c.expert()
    _meta_edit(e, base_model="other-llama", fingerprint="00112233445566778899")
    return c.eval("--expert", str(e)), "made for base model 'other-llama'"


@case("experts from different bases mixed")
def _(c):
    other = c.expert("other")
    _meta_edit(other, base_model="other-llama", fingerprint="00112233445566778899", label="other")
    return c.eval("--expert", str(c.ws.expert), "--expert", str(other)), "were made for different base models"


@case("one alpha for two experts")
def _(c):
    return (c.eval("--expert", str(c.ws.expert), "--expert", str(c.ws.expert), "--alpha", "1"),
            "--alpha: 1 value(s) for 2 expert(s)")


@case("damaged seen-question record")
def _(c):
    e = c.expert()
    (e / "seen.safetensors").write_bytes(b"garbage")
    return c.eval("--expert", str(e)), f"{e / 'seen.safetensors'}: does not match expert.json"


@case("expert format from the future")
def _(c):
    e = c.expert()
    _meta_edit(e, format_version=99)
    return c.eval("--expert", str(e)), "format version 99 is newer than"


@case("unknown strategy")
def _(c):
    return c.eval("--experts", str(c.ws.expert), "--strategy", "fewshots"), "unknown strategy 'fewshots'"


@case("strategy without experts")
def _(c):
    return c.eval("--strategy", "prompt"), "strategy 'prompt' chooses among experts: give at least one"


@case("cls strategy without its classification expert")
def _(c):
    return c.eval("--experts", str(c.ws.expert), "--strategy", "cls"), "strategy cls needs --cls-expert DIR"


@case("LoRA adapter for another model", early=False)
def _(c):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    folder = c.tmp / "lora"
    get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return c.eval("--lora", str(folder)), f"--lora {folder}: adapter does not fit model"


# ---- SVD cache ----------------------------------------------------------------------------------
def _cache_copy(c: Ctx) -> Path:
    home = Path(shutil.copytree(c.ws.home, c.tmp / "home"))
    os.environ["T2_HOME"] = str(home)  # restored by the test's monkeypatch
    (folder,) = (home / "svd").iterdir()
    return folder


@case("truncated safetensors in the SVD cache", early=False)
def _(c):
    folder = _cache_copy(c)
    target = sorted(folder.glob("*.safetensors"))[0]
    target.write_bytes(target.read_bytes()[:100])
    return c.eval("--expert", str(c.ws.expert)), f"{target}: unreadable SVD factors"


@case("corrupt SVD cache index", early=False)
def _(c):
    folder = _cache_copy(c)
    (folder / "index.json").write_text("{", encoding="utf-8")
    return c.eval("--expert", str(c.ws.expert)), f"{folder / 'index.json'}: corrupt SVD index"


# ---- outputs ------------------------------------------------------------------------------------
def _with_out(args: list[str], flag: str, path: Path) -> list[str]:
    if flag in args:
        args[args.index(flag) + 1] = str(path)
        return args
    return args + [flag, str(path)]


@case("--out in a folder that does not exist")
def _(c):
    return _with_out(c.eval(), "--out", c.tmp / "no" / "such" / "r.json"), "does not exist"


@case("--out that is an existing folder")
def _(c):
    return _with_out(c.eval(), "--out", c.ws.root), f"--out {c.ws.root}: is a folder"


@case("--out whose parent is a file")
def _(c):
    return _with_out(c.eval(), "--out", c.ws.results / "r.json"), f"{c.ws.results} is not a folder"


@case("--out in a folder without write permission")
def _(c):
    folder = c.readonly(c.tmp / "ro")
    return _with_out(c.eval(), "--out", folder / "r.json"), f"--out {folder / 'r.json'}: cannot write in {folder}"


@case("--submission in a folder that does not exist")
def _(c):
    return c.eval("--submission", str(c.tmp / "no" / "s.csv")), f"--submission {c.tmp / 'no' / 's.csv'}: folder"


@case("--markdown that is an existing folder")
def _(c):
    return c.eval("--markdown", str(c.tmp)), f"--markdown {c.tmp}: is a folder"


@case("train --out that is an existing file")
def _(c):
    (c.tmp / "run").write_text("keep", encoding="utf-8")
    return c.train(), f"--out {c.tmp / 'run'}: is a file, not a folder"


@case("train --out in a folder without write permission")
def _(c):
    folder = c.readonly(c.tmp / "ro")
    return _with_out(c.train(), "--out", folder / "run"), f"cannot write in {folder}"


@case("export lora --out that holds another export")
def _(c):
    (c.tmp / "lora").mkdir()
    (c.tmp / "lora" / "adapter_config.json").write_text("{}", encoding="utf-8")
    return (["export", "lora", "--model", str(c.ws.model), "--expert", str(c.ws.expert), "--rank", "4",
             "--out", str(c.tmp / "lora")], f"{c.tmp / 'lora'}: already exists and is not empty")


@case("export merged --out that is a file")
def _(c):
    (c.tmp / "merged").write_text("keep", encoding="utf-8")
    return (["export", "merged", "--model", str(c.ws.model), "--expert", str(c.ws.expert), "--out",
             str(c.tmp / "merged")], f"--out {c.tmp / 'merged'}: is a file, not a folder")


@case("expert init --out below a file")
def _(c):
    (c.tmp / "f").write_text("keep", encoding="utf-8")
    return (["expert", "init", "--model", str(c.ws.model), "--out", str(c.tmp / "f" / "e")],
            f"{c.tmp / 'f'} is a file, not a folder")


# ---- configs and sizes --------------------------------------------------------------------------
def _yaml(c: Ctx, text: str) -> Path:
    path = c.tmp / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@case("unknown YAML key")
def _(c):
    path = _yaml(c, "lr_rate: 0.1\n")
    return c.train("--config", str(path)), f"{path}: unknown key 'lr_rate' (did you mean 'lr'?)"


@case("YAML value of the wrong type")
def _(c):
    path = _yaml(c, "eval_every: many\n")
    return c.train("--config", str(path)), f"{path}: eval_every: 'many' is not a valid int"


@case("invalid YAML")
def _(c):
    path = _yaml(c, "steps: [1\n")
    return c.train("--config", str(path)), f"{path}: invalid YAML"


@case("config file that does not exist")
def _(c):
    return c.train("--config", str(c.tmp / "none.yaml")), f"{c.tmp / 'none.yaml'}: config file not found"


@case("unknown train flag")
def _(c):
    return c.train("--lr-rate", "1"), "unknown key 'lr_rate' (did you mean 'lr'?)"


@case("zero batch size")
def _(c):
    args = c.train()
    args[args.index("--batch-size") + 1] = "0"
    return args, "batch_size must be ≥ 1, got 0"


@case("negative learning rate")
def _(c):
    return c.train("--lr", "-1"), "lr must be ≥ 0, got -1.0"


@case("resume without a previous run")
def _(c):
    return c.train("--resume"), f"--resume: {c.tmp / 'run' / 'latest'} does not exist"


@case("no validation questions")
def _(c):
    return c.train("--val-fraction", "0"), "val_fraction 0.0 leaves no validation questions"


@case("eval batch size zero")
def _(c):
    return c.eval("--batch-size", "0"), "batch_size 0: must be at least 1"


@case("negative eval limit")
def _(c):
    return c.eval("--limit", "-3"), "limit -3: must be at least 1"


@case("LoRA rank zero")
def _(c):
    return (["export", "lora", "--model", str(c.ws.model), "--expert", str(c.ws.expert), "--rank", "0",
             "--out", str(c.tmp / "lora")], "--rank 0: a positive integer or 'full'")


# ---- the runner ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ws(tiny_model_dir, tmp_path_factory) -> WS:
    from transformer_squared.experts.expert import Expert, attach
    from transformer_squared.models.load import load_model, model_id

    root = tmp_path_factory.mktemp("ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("T2_HOME", str(root / "home"))
        model, _ = load_model(str(tiny_model_dir), device="cpu")
        svf = attach(model)
        expert = Expert.init(svf.factors, model_id(model), svf.fingerprint, label="good").save(root / "expert")
    results = root / "results.json"
    results.write_text('{"earlier": "results"}\n', encoding="utf-8")
    return WS(root, tiny_model_dir, root / "home", write_vmlu(root / "vmlu", per_subject=2), expert, results)


def _snapshot(*roots: Path) -> dict[Path, tuple[str, int]]:
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def readonly(request):
    """Make a folder that refuses new files even to root: chattr +i (root), chmod 555 (others)."""
    def make(folder: Path) -> Path:
        folder.mkdir()
        if os.geteuid() != 0:
            folder.chmod(0o555)
            request.addfinalizer(lambda: folder.chmod(0o755))
            return folder
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                            capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr +i support here: no folder can refuse root's writes")
        request.addfinalizer(lambda: subprocess.run(["chattr", "-i", str(folder)], check=True))
        return folder

    return make


def test_the_matrix_has_at_least_thirty_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, ws, tmp_path, monkeypatch, capsys, readonly):
    fn, early = CASES[name]
    monkeypatch.setenv("T2_HOME", str(ws.home))
    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", ""))  # cases may set it; undone after
    args, culprit = fn(Ctx(ws, tmp_path, readonly))
    if early:
        from transformers import AutoModelForCausalLM

        def tripwire(*a, **k):
            raise AssertionError(f"case '{name}': model weights were loaded, though the arguments show the error")

        monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", tripwire)
    before = _snapshot(ws.root, tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and err.endswith("\n"), err
    assert culprit in err, err
    assert "Traceback" not in err
    after = _snapshot(ws.root, tmp_path)
    changed = [str(p) for p in before if after.get(p) != before[p]]
    assert not changed, f"files changed or removed: {changed}"
    assert not set(after) - set(before), f"new files: {sorted(map(str, set(after) - set(before)))}"

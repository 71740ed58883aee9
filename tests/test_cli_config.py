"""The CLI generated from the run configs: every field a flag with its help and default, `--config FILE.yaml`,
dotted flags for nested sections, short flags, cross-field checks reported together, and `t2 generate`'s
prompt after `--expert DIR`."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
import typer

from transformer_squared import cli, flags
from transformer_squared.cli import main
from transformer_squared.config import section_type
from transformer_squared.errors import ConfigError
from transformer_squared.evaluation.runs import EvalRun, GenerateRun

from vmlu_files import write_vmlu


def run(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


def _comment(cls: type, name: str) -> str:
    """The field's trailing comment, read from the source of the class that declares it (cls or a dataclass
    base) with a regex (independent of config.field_help)."""
    m = None
    for klass in cls.__mro__:
        if m is None and dataclasses.is_dataclass(klass):
            m = re.search(rf"^\s+{name}:[^\n]*?#\s*(.*)$", inspect.getsource(klass), re.M)
    assert m, f"{cls.__name__}.{name} has no comment"
    return m.group(1).strip()


def _fields(cls: type, prefix: str = ""):
    """(dotted key, help, default) of every field, sections walked with dataclasses.fields."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        section = section_type(hints[f.name])
        if section is not None:
            yield from _fields(section, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        yield prefix + f.name, _comment(cls, f.name), default


def _help(command: str, capsys, monkeypatch) -> str:
    """`t2 COMMAND --help` in this process (so strategies registered by the tests are listed too), unwrapped."""
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 3000)
    code, out, err = run([command, "--help"], capsys)
    assert code == 0, err
    return " ".join(out.replace("│", " ").split())


def _shown(value) -> str:
    if value is None or value == []:
        return "none"
    return "''" if value == "" else str(value)


UNREACHABLE_BEFORE = {"eval.save_every", "strategy.prompt.max_request_tokens", "strategy.fewshot.elite",
                      "strategy.fewshot.tol", "strategy.prompt.chat"}  # fields the hand-written options of `t2 eval` left out


@pytest.mark.parametrize("command, cls, some", [("eval", EvalRun, UNREACHABLE_BEFORE),
                                                ("generate", GenerateRun, {"strategy.fewshot.tol", "model.dtype"})])
def test_help_lists_every_field_with_its_help_and_default(command, cls, some, capsys, monkeypatch):
    text = _help(command, capsys, monkeypatch)
    keys = list(_fields(cls))
    assert some <= {k for k, _, _ in keys}
    for key, note, default in keys:
        if key == "prompt":  # the positional argument
            assert "PROMPT" in text and note in text
            continue
        flag = "--" + (key if "." in key else key.replace("_", "-"))
        assert re.search(rf"{re.escape(flag)}[ ,/]", text), f"{flag} missing from t2 {command} --help"
        assert f"{' '.join(note.split())} (default: {_shown(default)})" in text, f"{key}: help or default missing"


def test_eval_from_a_yaml_config_and_flags_over_it(tiny_model_dir, tmp_path):
    data = write_vmlu(tmp_path / "vmlu")
    out = tmp_path / "r.json"
    y = tmp_path / "eval.yaml"
    y.write_text(f"out: {out}\nmodel:\n  name: {tiny_model_dir}\n  device: cpu\n"
                 f"eval:\n  task: vmlu\n  data: {data}\n  limit: 5\n  batch_size: 2\n  protocol: letter\n",
                 encoding="utf-8")
    main(["eval", "--config", str(y)])
    res = json.loads(out.read_text(encoding="utf-8"))
    assert len(res["predictions"]) == 5 and list(res["metrics"]) == ["letter"]
    out.unlink()
    main(["eval", "-c", str(y), "--eval.limit", "3", "--eval.protocol=generate"])  # flags override the file
    res = json.loads(out.read_text(encoding="utf-8"))
    assert len(res["predictions"]) == 3 and list(res["metrics"]) == ["generate"]


def test_yaml_mistakes_are_named(tmp_path, capsys):
    y = tmp_path / "eval.yaml"
    y.write_text("out: r.json\neval:\n  limt: 3\nstrategy:\n  shots: 4\n", encoding="utf-8")
    code, _, err = run(["eval", "--config", str(y)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{y}: unknown key 'eval.limt' (did you mean 'eval.limit'?)" in err
    assert "strategy.shots given without strategy.name" in err


def test_cross_field_problems_are_reported_together(tmp_path, capsys):
    code, _, err = run(["eval", "--lora", str(tmp_path), "--strategy", "prompt", "--alpha", "1", "--limit", "0",
                        "--dtype", "float8"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    for part in ("Missing option '--out'", "--alpha and --strategy exclude each other",
                 "strategy 'prompt' chooses among experts", "--lora evaluates a PEFT adapter alone",
                 "limit 0: must be at least 1", "dtype 'float8'"):
        assert part in err, (part, err)


def test_generate_takes_the_prompt_after_an_expert_folder(tiny_model_dir, tmp_path, capsys):
    code, _, _ = run(["expert", "init", "--model", str(tiny_model_dir), "--out", str(tmp_path / "e"),
                      "--label", "demo"], capsys)
    assert code == 0
    code, out, err = run(["generate", "--model", str(tiny_model_dir), "--max-new-tokens", "3",
                          "--expert", str(tmp_path / "e"), "Hello there"], capsys)
    assert code == 0 and out.strip(), err
    code, _, err = run(["generate", "--model", str(tiny_model_dir), "--expert", str(tmp_path / "e")], capsys)
    assert code == 2 and "Missing argument 'prompt'" in err
    code, _, err = run(["generate", "--model", str(tiny_model_dir), "-e", str(tmp_path / "e"),
                        str(tmp_path / "nowhere"), "Hello"], capsys)
    assert code == 2 and str(tmp_path / "nowhere") in err  # the real cause: a folder that does not exist


# ---- the generator on its own, with a config shaped like a strategy's nested settings ----
@dataclass
class Fewshot:
    shots: int = 10  # labelled examples
    seed: int = 0  # search seed


@dataclass
class Picker:
    name: str = "a"  # registry name
    batch_size: int = 8  # prompts per pass
    fewshot: Fewshot = field(default_factory=Fewshot)  # the fewshot settings
    tags: list[str] = field(default_factory=list)  # free labels


@dataclass
class Section:
    seed: int = 0  # sample seed
    chat: bool = False  # chat template
    ratio: float = field(default=0.5, metadata={"help": "from metadata"})  # (the metadata wins)


@dataclass
class Toy:
    out: str = ""  # where to write
    run: Section = field(default_factory=Section)  # the run
    picker: Picker | None = None  # optional registry section

    FLAGS: ClassVar[dict[str, tuple[str, ...]]] = {"--seed": ("run.seed", "picker*.seed"), "-p": ("picker.name",),
                                                   "--maybe": ("run.chat", "picker.*.gone")}

    def __post_init__(self) -> None:
        if self.run.ratio > 1:
            raise ConfigError(f"run.ratio {self.run.ratio}: at most 1")


def _toy(args: list[str]) -> Toy:
    app = typer.Typer()
    got = []
    flags.command(app, "toy", Toy, got.append, help="A toy.")
    app.command("other")(lambda: None)  # two commands, so `toy` is a subcommand as in t2
    app(args=cli._expand_multi(flags.normalise(["toy", *args])), standalone_mode=False)
    return got[0]


def test_generator_nested_sections_short_flags_and_bools():
    t = _toy([])
    assert t == Toy() and t.picker is None
    t = _toy(["--seed", "3", "--run.chat", "true", "--ratio", "0.25"])
    assert t.run == Section(3, True, 0.25) and t.picker is None  # --seed skips the absent picker
    t = _toy(["-p", "b", "--seed", "4", "--picker.fewshot.shots", "2", "--picker.batch-size", "3", "--tags", "x",
              "--tags", "y", "--no-chat"])
    assert t.picker == Picker("b", 3, Fewshot(2, 4), ["x", "y"]) and t.run.seed == 4 and t.run.chat is False
    t = _toy(["-p", "b", "--seed", "4", "--picker.fewshot.seed", "9", "--run.chat", "false"])
    assert t.picker.fewshot.seed == 9 and t.run.seed == 4  # the dotted key wins over the short flag
    with pytest.raises(ConfigError, match="picker.fewshot given without picker.name"):
        _toy(["--shots", "2"])
    with pytest.raises(ConfigError, match="run.ratio 2.0: at most 1"):
        _toy(["--run.ratio", "2"])


def test_generator_help_comes_from_comments_or_metadata():
    from transformer_squared.config import field_help

    assert field_help(Section) == {"seed": "sample seed", "chat": "chat template", "ratio": "from metadata"}
    opts = {o.param: o for o in flags._options(Toy)}
    assert opts["picker__fewshot__shots"].decls == ["--picker.fewshot.shots", "--shots"]
    assert opts["_seed"].keys == ["run.seed", "picker.fewshot.seed"]  # FLAGS: one short flag for both
    assert opts["run__seed"].decls == ["--run.seed", "--run-seed"]  # its own name is shared: section-field
    assert opts["picker__fewshot__seed"].decls == ["--picker.fewshot.seed", "--fewshot-seed"]
    assert opts["run__chat"].decls == ["--run.chat", "--chat", "--maybe"]  # a pattern may match nothing

    @dataclass
    class Broken(Toy):
        FLAGS: ClassVar[dict[str, tuple[str, ...]]] = {"--x": ("run.gone",)}

    with pytest.raises(AssertionError, match="no field"):
        flags._options(Broken)

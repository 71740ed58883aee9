"""Command-line options generated from config dataclasses (used by cli.py): `--section.key` for every field,
with the field's `# comment` (or `metadata["help"]`) as help and its default shown; the field's own name as
a short flag where no other field has it; the config's `FLAGS` for the rest; `--config FILE.yaml`.

Values go through config.load_config (defaults, then the YAML file, then flags), so the YAML and the flags
of a command share one set of checks and messages, and the config's `__post_init__` reports every problem.
"""

from __future__ import annotations

import collections
import fnmatch
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Callable, List, Optional, Union

import typer
from rich.markup import escape

from .config import Leaf, leaves, load_config

@dataclass
class _Opt:
    """One generated option: its click parameter name, flags, the dotted keys it sets, and how it is shown."""

    param: str  # the callback's keyword
    decls: list[str]  # flags ('--eval.chat/--no-eval.chat' for a boolean)
    keys: list[str]  # the config keys it sets
    leaf: Leaf  # the (first) field it sets: type, default, help
    shared: bool = False  # a short flag for several keys (set only where their section exists)


def _annotation(tp: Any) -> Any:
    """The click-facing type of a config field: bool, int, float, a list of those, else str (checked later)."""
    inner = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (Union, UnionType) else [tp]
    base = inner[0] if len(inner) == 1 else str
    if typing.get_origin(base) in (list, tuple):
        item = (typing.get_args(base) or (str,))[0]
        return List[item if item in (int, float) else str]
    return Optional[base if base in (bool, int, float) else str]


def _bool(decl: str) -> str:
    """'--eval.chat' → '--eval.chat/--no-eval.chat'."""
    return f"{decl}/--no-{decl[2:]}"


def _pair(key: str) -> str:
    """'strategy.cls.expert' → 'cls_expert' (the last section's name and the field's)."""
    return "_".join(key.split(".")[-2:])


def _options(cls: type) -> list[_Opt]:
    """The options of a run config: `--section.key` for every field, plus its short flags: the field's own
    name where no other field has it (else its section's name and its own, where unique), and the config's
    FLAGS (several keys for one flag where they share it)."""
    fields = leaves(cls)
    keys = [f.key for f in fields]
    by_key = {f.key: f for f in fields}
    short = getattr(cls, "FLAGS", {})
    targets: dict[str, list[str]] = {}
    for flag, patterns in short.items():
        hits = [k for p in patterns for k in keys if fnmatch.fnmatchcase(k, p)]
        missing = [p for p in patterns if "*" not in p and p not in keys]
        assert not missing, f"{cls.__name__}.FLAGS {flag}: no field {missing}"
        targets[flag] = list(dict.fromkeys(hits))
    count = collections.Counter(k.rsplit(".", 1)[-1] for k in keys)
    pair = collections.Counter(_pair(k) for k in keys if "." in k)
    opts = []
    for f in fields:
        name = f.key.rsplit(".", 1)[-1]
        own = "--" + name.replace("_", "-")
        decls = [own] if name == f.key else ["--" + f.key]  # a top-level key is its own short flag
        if count[name] == 1 and own not in short and own not in decls:
            decls.append(own)
        decls += [flag for flag, hit in targets.items() if hit == [f.key]]
        opts.append(_Opt(f.key.replace(".", "__"), decls, [f.key], f))
    taken = {d for o in opts for d in o.decls} | set(short)
    for o in opts:  # a nested key without a short flag of its own: its section's name and its own, `--cls-expert`
        two = "--" + _pair(o.leaf.key).replace("_", "-")
        if len(o.decls) == 1 and "." in o.leaf.key and pair[_pair(o.leaf.key)] == 1 and two not in taken:
            o.decls.append(two)
    for flag, hit in targets.items():
        if len(hit) > 1:
            opts.append(_Opt("_" + flag.strip("-").replace("-", "_"), [flag], hit, by_key[hit[0]], shared=True))
    return opts


def _show(value: Any) -> str:
    return "''" if value == "" else "none" if value is None else (",".join(map(str, value)) or "none") if isinstance(value, list) else str(value)


def _decls(opt: _Opt) -> list[str]:
    """The click declarations of an option: a boolean's flags as '--eval.chat/--no-eval.chat'."""
    if _annotation(opt.leaf.type) == Optional[bool]:
        return [_bool(d) if d.startswith("--") else d for d in opt.decls]
    return list(opt.decls)


def _parameter(opt: _Opt) -> inspect.Parameter:
    if opt.shared:
        note = f"sets {', '.join(opt.keys)} (default: as those keys)"
    else:
        note = f"{opt.leaf.help} (default: {_show(opt.leaf.default)})".strip()
    option = typer.Option(None, *_decls(opt), help=escape(note), show_default=False)
    return inspect.Parameter(opt.param, inspect.Parameter.KEYWORD_ONLY, default=option,
                             annotation=_annotation(opt.leaf.type))


def _put(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = list(value) if isinstance(value, (list, tuple)) else value


class _Command:
    """The callback of one generated command. Its signature (which typer reads when the command line is
    parsed) is built from the config class then, so a strategy registered after import has its flags too."""

    def __init__(self, cls: type, run: Callable[[Any], None], help: str, argument: str | None,
                 fill: Callable[[dict[str, Any]], None] | None) -> None:
        self.cls, self.run, self.argument, self.fill = cls, run, argument, fill
        self.__doc__ = help
        self.__annotations__: dict[str, Any] = {}  # the types are in the signature

    @property
    def __signature__(self) -> inspect.Signature:
        cls, argument = self.cls, self.argument
        params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                    default=typer.Option(None, "--config", "-c", help="YAML file of these keys "
                                                         "(sections as mappings); flags override it."))]
        if argument is not None:
            note = {f.key: f.help for f in leaves(cls)}.get(argument, "")
            params.insert(0, inspect.Parameter(argument, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[str],
                                               default=typer.Argument(None, metavar=argument.upper(), help=note)))
        return inspect.Signature(params + [_parameter(o) for o in _options(cls) if o.leaf.key != argument])

    def __call__(self, **kw: Any) -> None:
        values: dict[str, Any] = {}
        soft: dict[str, Any] = {}
        if self.argument is not None and kw.get(self.argument) is not None:
            values[self.argument] = kw[self.argument]
        opts = [o for o in _options(self.cls) if o.param in kw]
        for opt in (o for o in opts if not o.shared):
            value = kw[opt.param]
            if value is not None and not (isinstance(value, (list, tuple)) and not value):
                _put(values, opt.keys[0], value)
        given = {o.keys[0] for o in opts if not o.shared and kw[o.param] not in (None, (), [])}
        for opt in (o for o in opts if o.shared and kw[o.param] is not None):
            for key in opt.keys:
                if key not in given:  # the dotted flag wins over the short one
                    _put(soft, key, kw[opt.param])
        if self.fill is not None:
            self.fill(values)
        self.run(load_config(self.cls, kw["config"], values=values, soft=soft))


COMMANDS: list[_Command] = []  # every generated command (normalise reads their flags)


def command(group: typer.Typer, name: str, cls: type, run: Callable[[Any], None], help: str,
            argument: str | None = None, fill: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Register `t2 NAME`: its options generated from the run config `cls` (flags, help and defaults from the
    dataclass), `--config FILE.yaml`, and `argument` (a field) as the positional argument; `run(cfg)` does the work.

    Order: the config's defaults, then the YAML file, then flags; `fill(values)` may reinterpret the given
    values (argument order) before the config checks itself."""
    callback = _Command(cls, run, help, argument, fill)
    COMMANDS.append(callback)
    group.command(name)(callback)


def _flag_tables() -> tuple[set[str], dict[str, str]]:
    """(every generated flag, boolean flag → its negation) over the registered commands, as of now."""
    known: set[str] = set()
    negation: dict[str, str] = {}
    for c in COMMANDS:
        for opt in _options(c.cls):
            for d in _decls(opt):
                known.update(d.split("/"))
                if "/" in d:
                    negation[d.split("/")[0]] = d.split("/")[1]
    return known, negation


def normalise(args: list[str]) -> list[str]:
    """Generated flags in every spelling: `--eval.max-new-tokens` as `--eval.max_new_tokens`, and a boolean
    with a value (`--eval.chat false`, as YAML and `t2 train` take it) as `--eval.chat` / `--no-eval.chat`."""
    known, negation = _flag_tables()
    out: list[str] = []
    skip = False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a.startswith("--") and "." in a and a not in known:
            flag, eq, val = a.partition("=")
            fixed = "--" + flag[2:].replace("-", "_")
            if fixed in known:
                a = fixed + eq + val
        flag, eq, val = a.partition("=")
        nxt = val if eq else (args[i + 1] if i + 1 < len(args) else "")
        if flag in negation and nxt.lower() in ("true", "false"):
            out.append(flag if nxt.lower() == "true" else negation[flag])
            skip = not eq
            continue
        out.append(a)
    return out

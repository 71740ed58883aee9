"""Fill dataclass configs from YAML files and `--key value` flags; dump the resolved config (STYLE §2).

Nested dataclasses are YAML sections and dotted flags (`--train.lr 1e-3`). Unknown keys and bad
values are collected and reported together, each naming the file or flag and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError, T2Error

C = TypeVar("C")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")) and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
        inner = args[0] if args else str
        out = [_coerce(v, inner, where) for v in items]
        return out if origin is list else tuple(out)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes", "on"):
            return True
        if str(value).lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: {value!r} is not a boolean (true/false)")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(float(value)) if tp is int and isinstance(value, str) and "e" in value.lower() else tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {value!r} is not a valid {tp.__name__}") from None
    return value


def _closest(key: str, names: list[str]) -> str | None:
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return close[0]
    prefixed = [n for n in names if key.startswith(n) or n.startswith(key)]
    return prefixed[0] if prefixed else None


def section_type(tp: Any) -> type | None:
    """The dataclass of a section field typed `Section` or `Section | None`; None for a plain value."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1 and isinstance(inner[0], type) and dataclasses.is_dataclass(inner[0]):
            return inner[0]
    return None


def blank(cls: type[C]) -> C:
    """`cls` with every field at its default, its __post_init__ checks not yet run (they run once filled)."""
    obj = object.__new__(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            raise TypeError(f"{cls.__name__}.{f.name} has no default (STYLE §2: every field has one)")
        object.__setattr__(obj, f.name, value)
    return obj


def _open_section(obj: Any, key: str, tp: type, value: Any, where: str, errors: list[str]) -> Any:
    """The section a YAML mapping (or flags) fills where the field is `Section | None` and still None.

    A section with a `name` field (one chosen from a registry, like `strategy`) is switched on by its name:
    `strategy: fewshot` is short for `strategy: {name: fewshot}`, and its other keys without a name are an error."""
    names = {f.name for f in dataclasses.fields(tp)}
    if isinstance(value, str) and "name" in names:
        value = {"name": value}
    if not isinstance(value, dict):
        errors.append(f"{where}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return None
    if "name" in names and "name" not in value:
        errors.append(f"{where}: {', '.join(f'{key}.{k}' for k in value)} given without {key}.name (which {key}?)")
        return None
    setattr(obj, key, blank(tp))
    return value


def _apply(obj: Any, data: dict[str, Any], source: str, errors: list[str], prefix: str = "",
           soft: bool = False) -> None:
    """Set `data`'s keys on `obj`, collecting problems. `soft`: keys of a section that is absent (None) are
    skipped (a short flag such as --seed sets the strategy's seed only when there is a strategy)."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        key_n = key.replace("-", "_")
        if key_n not in names:
            close = _closest(key_n, names)
            hint = f" (did you mean '{prefix}{close}'?)" if close else ""
            errors.append(f"{source}: unknown key '{prefix}{key}'{hint}")
            continue
        current = getattr(obj, key_n)
        section = section_type(hints[key_n])
        if soft and current is None and section is not None:
            continue
        if current is None and section is not None and value is not None and not (
                isinstance(value, str) and value.lower() in ("none", "null")):
            value = _open_section(obj, key_n, section, value, f"{source}: {prefix}{key}", errors)
            if value is None:
                continue
            current = getattr(obj, key_n)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _apply(current, value, source, errors, f"{prefix}{key_n}.", soft)
            continue
        try:
            setattr(obj, key_n, _coerce(value, hints[key_n], f"{source}: {prefix}{key}"))
        except ConfigError as e:
            errors.append(str(e))


def parse_flags(flags: list[str]) -> dict[str, Any]:
    """['--train.lr', '1e-3', '--resume'] → {'train': {'lr': '1e-3'}, 'resume': 'true'}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(flags):
        flag = flags[i]
        if not flag.startswith("--") or len(flag) < 3:
            raise ConfigError(f"unexpected argument '{flag}' (config flags look like --key value)")
        key, eq, val = flag[2:].partition("=")
        if not eq:
            if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
                val, i = flags[i + 1], i + 1
            else:
                val = "true"
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p.replace("-", "_"), {})
        node[leaf.replace("-", "_")] = val
        i += 1
    return out


def load_config(cls: type[C], yaml_path: str | Path | None = None, flags: list[str] | None = None,
                base: dict[str, Any] | None = None, values: dict[str, Any] | None = None,
                soft: dict[str, Any] | None = None) -> C:
    """cls's defaults filled from `base`, then the YAML file, then flags, then `values` (nested, as the CLI
    parsed them), then `soft` (like values, but skipping absent sections); __post_init__ checks run once,
    on the filled config."""
    obj = blank(cls)
    errors: list[str] = []
    if base:
        _apply(obj, base, "config", errors)
    if yaml_path is not None:
        path = Path(yaml_path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of keys")
        _apply(obj, data, str(path), errors)
    if flags:
        _apply(obj, parse_flags(flags), "flag", errors)
    if values:
        _apply(obj, values, "flag", errors)
    if soft:
        _apply(obj, soft, "flag", errors, soft=True)
    if errors:
        raise ConfigError("; ".join(errors))
    if hasattr(obj, "__post_init__"):
        obj.__post_init__()
    return obj


def check_sections(cfg: Any, names: tuple[str, ...]) -> list[str]:
    """The problems of a run config's sections (each section's own __post_init__), to report with the run's own."""
    problems = []
    for name in names:
        section = getattr(cfg, name)
        if section is not None and hasattr(section, "__post_init__"):
            try:
                section.__post_init__()
            except T2Error as e:
                problems.append(str(e))
    return problems


def configure_run(cls: type[C], out_dir: str | Path, config_path: str | Path | None, named: dict[str, Any],
                  flags: list[str], resume: bool = False) -> C:
    """A run's config: (on resume) its saved config.yaml, then a YAML file, then named options and --key flags."""
    base = None
    saved = Path(out_dir) / "config.yaml"
    if resume and saved.is_file():
        base = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    given = parse_flags(list(flags))
    clash = [f"--{k} {given[k]} contradicts {k} '{v}' given before it" for k, v in named.items()
             if v is not None and k in given and str(given[k]) != str(v)]
    if clash:
        raise ConfigError("; ".join(clash))
    extra = [x for k, v in named.items() if v is not None for x in (f"--{k}", str(v))]
    return load_config(cls, config_path, extra + list(flags), base=base)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One settable field of a config, sections flattened: `key` is dotted (`strategy.shots`)."""

    key: str  # dotted path from the top config
    type: Any  # the field's type hint
    default: Any  # its default value
    help: str  # its meaning (the field's `# comment`, or metadata["help"])


def leaves(cls: type, prefix: str = "") -> list[Leaf]:
    """Every field of `cls` that takes a value, nested sections (also `Section | None`) flattened, in source order."""
    hints = typing.get_type_hints(cls)
    notes = field_help(cls)
    out: list[Leaf] = []
    for f in dataclasses.fields(cls):
        section = section_type(hints[f.name])
        if section is not None:
            out += leaves(section, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(Leaf(prefix + f.name, hints[f.name], default, notes.get(f.name, "")))
    return out


def _comments(cls: type, names: set[str]) -> dict[str, str]:
    """Field name → its trailing `# comment` (with continuation comment lines) in the class body of `cls`."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # defined where no source is kept (an interactive session)
        return {}
    notes: dict[str, str] = {}
    start: tokenize.TokenInfo | None = None  # first token of the current logical line
    second: tokenize.TokenInfo | None = None
    comments: list[str] = []
    for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent(source)).readline):
        if tok.type == tokenize.COMMENT:
            comments.append(tok.string.lstrip("#").strip())
        elif tok.type == tokenize.NEWLINE:
            if start is not None and second is not None and start.string in names and second.string == ":" \
                    and start.start[1] > 0 and comments:
                notes.setdefault(start.string, " ".join(comments))
            start, second, comments = None, None, []
        elif tok.type in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT):
            if tok.type == tokenize.NL and start is None:
                comments = []  # a comment on a line of its own belongs to no field
        elif start is None:
            start = tok
        elif second is None:
            second = tok
    return notes


def field_help(cls: type) -> dict[str, str]:
    """Field name → help: `field(metadata={"help": ...})` where given, else the field's trailing `# comment`
    (in the class that declares it: a settings class may take shared fields from one base dataclass)."""
    names = {f.name for f in dataclasses.fields(cls)}
    notes: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # the subclass's own comment wins
        if dataclasses.is_dataclass(klass):
            notes |= _comments(klass, names)
    for f in dataclasses.fields(cls):
        if f.metadata.get("help"):
            notes[f.name] = f.metadata["help"]
    return notes


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from .atomic import write_text

    write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), Path(path))

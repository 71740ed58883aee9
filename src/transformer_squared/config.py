"""Fill dataclass configs from YAML files and `--key value` flags; dump the resolved config (STYLE §2).

Nested dataclasses are YAML sections and dotted flags (`--train.lr 1e-3`). Unknown keys and bad
values are collected and reported together, each naming the file or flag and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConfigError

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


def _apply(obj: Any, data: dict[str, Any], source: str, errors: list[str], prefix: str = "") -> None:
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
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _apply(current, value, source, errors, f"{prefix}{key_n}.")
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
                base: dict[str, Any] | None = None) -> C:
    """cls() filled from `base`, then the YAML file, then flags; __post_init__ checks run last."""
    obj = cls()
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
    if errors:
        raise ConfigError("; ".join(errors))
    if hasattr(obj, "__post_init__"):
        obj.__post_init__()
    return obj


def configure_run(cls: type[C], out_dir: str | Path, config_path: str | Path | None, named: dict[str, Any],
                  flags: list[str], resume: bool = False) -> C:
    """A run's config: (on resume) its saved config.yaml, then a YAML file, then named options and --key flags."""
    base = None
    saved = Path(out_dir) / "config.yaml"
    if resume and saved.is_file():
        base = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    extra = [x for k, v in named.items() if v is not None for x in (f"--{k}", str(v))]
    return load_config(cls, config_path, extra + list(flags), base=base)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from .atomic import write_text

    write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True), Path(path))

"""Typed configs: nested dataclasses set by dotted ``key=value`` overrides and JSON files.

Fields: int, float, str, bool, Literal, tuple[X, ...], tuple[X, Y], X | None, X | Literal["auto"], sections.
A command-line value is read as the JSON value a file would hold (``1,2`` a list, ``none`` null; a str field
keeps its text), so both share one typed conversion. A root class's ``RENAMED`` (old dotted key -> new) keeps
old command lines and ``config.json`` files working. A ``__post_init__``'s :class:`BadSetting` is reported
under the key as typed (``bad value hidden=0: must be >= 1``), or a file value's dotted path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import json
import pathlib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from fastbind.errors import BadSetting, UserError

T = TypeVar("T")
PRESET_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
_ALIASES = "fastbind.config.aliases"  # dataclass field metadata key
_TRUE, _FALSE, _NONE = {"true", "1", "yes", "y", "on"}, {"false", "0", "no", "n", "off"}, {"none", "null"}
_WORDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", tuple: "a list"}


def alias(*names: str, **field_kwargs: Any) -> Any:
    """A field that overrides also reach under other ``names``: ``lam = alias("lambda", default=0.0)``
    (``cache.lambda=`` sets ``cache.lam``); on a section, short keys (``head=`` for ``model.head``)."""
    return dataclasses.field(metadata={**field_kwargs.pop("metadata", {}), _ALIASES: names}, **field_kwargs)


@functools.cache
def _fields(tp: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(tp) if isinstance(tp, type) and dataclasses.is_dataclass(tp) else {}
    return {f.name: hints[f.name] for f in dataclasses.fields(tp) if f.init} if hints else {}  # type: ignore


@functools.cache
def _aliases(cls: type) -> dict[str, str]:
    out: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        sub = _fields(_fields(cls).get(f.name))
        for name in f.metadata.get(_ALIASES, ()):
            if name in _fields(cls) or name in out or (sub and name not in {**sub, **_aliases(_fields(cls)[f.name])}):
                raise TypeError(f"{cls.__qualname__}.{f.name}: alias {name!r} clashes or names nothing")
            out[name] = f"{f.name}.{name}" if sub else f.name
    return out


def resolve_key(cls: type, key: str) -> str:
    """The field path a key stands for (``head`` -> ``model.head``, old names through ``RENAMED``);
    parts naming nothing are kept."""
    todo, path, tp = _renamed(cls, key).split("."), [], cls
    while todo:
        part, current = todo.pop(0), tp
        if _fields(current) and part in _aliases(current) and part not in _fields(current):
            part, *rest = _aliases(current)[part].split(".")
            todo = rest + todo
        tp = _fields(current).get(part)
        path.append(part)
    return ".".join(path)


def _type(root: type, path: str) -> Any:  # the annotation at a field path; None when it names no field
    return functools.reduce(lambda tp, part: _fields(tp).get(part), path.split("."), root)  # type: ignore[arg-type]


@functools.cache
def _spellings(root: type) -> dict[str, list[str]]:
    """Field path of every setting -> the keys users can type for it (for --help and did-you-mean)."""
    out: dict[str, list[str]] = {}
    keys = [*_fields(root), *_aliases(root)]
    for key in keys:  # grows while it is read: a section's keys follow it
        tp = _type(root, path := resolve_key(root, key))
        if _fields(tp):
            keys += [f"{key}.{k}" for k in [*_fields(tp), *_aliases(tp)]]
        else:
            out.setdefault(path, []).append(key)
    return out


def _unknown(key: str, root: type) -> UserError:
    keys = [k for keys in [*_spellings(root).values(), getattr(root, "RENAMED", {})] for k in keys if k != key]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(_fields(root))}"
    return UserError(f"unknown key {key!r} ({hint})")


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted key: leaf value} (an empty dict is a leaf)."""
    return {key: value for k, v in data.items()
            for key, value in (flatten(v, f"{prefix}{k}.") if isinstance(v, Mapping) and v else {prefix + k: v}).items()}


def top_keys(cls: type) -> list[str]:
    """The keys of ``cls``'s own level that users can type: its fields and short keys."""
    return [*_fields(cls), *_aliases(cls)]


def _renamed(root: type, key: str) -> str:
    """``key`` under today's names: ``root.RENAMED``, then the table of the section it enters, and so on."""
    new = [n + key[len(o):] for o, n in getattr(root, "RENAMED", {}).items() if (key + ".").startswith(o + ".")]
    key = new[0] if new else key
    head, _, rest = key.partition(".")
    return f"{head}.{_renamed(_fields(root)[head], rest)}" if rest and _fields(_fields(root).get(head)) else key


def _options(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _from_text(text: str, tp: Any) -> Any:
    """A command-line value as the JSON value a config file would hold for a field of type ``tp``."""
    options, s = _options(tp), text.strip()
    if s.lower() in _NONE and type(None) in options:
        return None
    if str in options:
        return text
    if any(typing.get_origin(o) is Literal and s in typing.get_args(o) for o in options):
        return s  # a Literal's word is itself, even one that reads as a boolean or a number ("true")
    if bool in options and s.lower() in _TRUE | _FALSE:
        return s.lower() in _TRUE
    seq = next((typing.get_args(o) for o in options if typing.get_origin(o) is tuple), None)
    if seq is not None:
        items = [i.strip() for i in s.strip("[]").split(",")] if s.strip("[] ") else []
        if "" in items:
            raise UserError(f"malformed list {text!r}: empty item")
        return [_from_text(i.strip("\"'"), seq[0] if seq[1:] == (Ellipsis,) else seq[min(k, len(seq) - 1)])
                for k, i in enumerate(items)]
    for parse in (json.loads, float):  # float: inf, .5, 1_000
        with contextlib.suppress(ValueError):
            return parse(s)
    return text


def _convert(value: Any, tp: Any, name: str) -> Any:
    """``value`` (JSON-ish) as a ``tp``; errors name the key as the user gave it."""
    options = [o for o in _options(tp) if o is not type(None)]
    if value is None and len(options) < len(_options(tp)):
        return None
    if len(options) > 1:  # X | Literal["auto"]
        for option in options:
            with contextlib.suppress(UserError):
                return _convert(value, option, name)
        raise UserError(f"bad value for {name!r}: expected {str(tp).replace('typing.', '')}, got {value!r}")
    tp, number = options[0], type(value) in (int, float)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal and not any(value == c and type(value) is type(c) for c in args):
        raise UserError(f"bad value for {name!r}: {value!r} is not one of {', '.join(map(str, args))}")
    if origin is tuple and isinstance(value, (list, tuple)):
        fixed = args[1:] != (Ellipsis,)
        if fixed and len(value) != len(args):
            raise UserError(f"bad value for {name!r}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(v, args[k if fixed else 0], f"{name}[{k}]") for k, v in enumerate(value))
    fits = {bool: type(value) is bool, str: type(value) is str, float: number,
            int: number and float(value).is_integer(), Literal: True}
    if fits.get(origin or tp):
        return value if origin is Literal else tp(value)
    if (origin or tp) in _WORDS:
        raise UserError(f"bad value for {name!r}: expected {_WORDS[origin or tp]}, got {value!r}")
    raise TypeError(f"unsupported config annotation {tp!r} for {name!r}")


def _build(cls: type[T], data: Mapping[str, Any], typed: Mapping[str, tuple[str, str]], where: str = "") -> T:
    """A ``cls`` from flat ``data`` {path: JSON-ish value}; ``typed``: path -> (key, text) as the user typed it."""
    if not where and (unknown := [k for k in data if _type(cls, k) is None]):
        raise _unknown(unknown[0], cls)
    kwargs = {}
    for name, tp in _fields(cls).items():
        path = where + name
        if _fields(tp) and (path in data or any(k.startswith(path + ".") for k in data)):
            if not isinstance(data.get(path, {}), Mapping):
                raise UserError(f"section {path!r} must be a table (a JSON object), got {data[path]!r}")
            kwargs[name] = _build(tp, data, typed, path + ".")
        elif path in data:
            kwargs[name] = _convert(data[path], tp, typed.get(path, (path,))[0])
    try:
        return cls(**kwargs)
    except BadSetting as e:
        shown = json.dumps(data.get(where + e.field, getattr(cls, e.field, None)), default=str)
        key, text = typed.get(where + e.field, (where + e.field, shown))
        raise UserError(f"bad value {key}={text}: {e.message}") from None
    except UserError:
        raise
    except ValueError as e:
        raise UserError(f"invalid {where[:-1] or cls.__name__} settings: {str(e).splitlines()[0]}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config instance as a nested, JSON-ready dict (tuples become lists); ``from_dict`` reads it back."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """A ``cls`` from a nested dict (a config file, a saved ``config.json``); missing keys keep defaults."""
    flat = flatten(data)
    paths = {k: resolve_key(cls, k) for k in flat}  # as written (short keys, old names) -> field path
    return _build(cls, {paths[k]: v for k, v in flat.items()},
                  {paths[k]: (k, json.dumps(v, default=str)) for k, v in flat.items()})


def apply_overrides(cfg: T, overrides: Sequence[str]) -> T:
    """A copy of ``cfg`` with ``key=value`` items applied (later ones win), validated once, at the end."""
    root, data, typed = type(cfg), flatten(to_dict(cfg)), {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"malformed override {item!r} (expected key=value)")
        path = resolve_key(root, key := key.strip())
        if (tp := _type(root, path)) is None:
            raise _unknown(key, root)
        if _fields(tp):
            raise UserError(f"{key!r} is a section; set its fields instead, e.g. {key}.{next(iter(_fields(tp)))}=...")
        data[path], typed[path] = _from_text(text, tp), (key, text.strip())
    return _build(root, data, typed)


def presets() -> list[str]:
    """Names of the config presets shipped with fastbind (usable as ``--config NAME``)."""
    return sorted(f.stem for f in PRESET_DIR.glob("*.json"))


def _read_file(path: str) -> dict[str, Any]:
    """A JSON config file, or a preset (``fastbind/configs/NAME.json``); keys starting ``_`` are comments."""
    p = pathlib.Path(path)
    if not p.exists() and not p.suffix and p.parent == pathlib.Path("."):
        p = PRESET_DIR / f"{p.name}.json"
    if p.suffix.lower() != ".json" or not p.is_file():
        toml = p.suffix.lower() == ".toml"  # no longer read: the same keys work as JSON
        raise UserError(f"cannot read config {path!r}: " + ("write it as JSON (the same keys), TOML is not read" if toml
                        else f"no such .json file or preset (presets: {', '.join(presets())})"))
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"cannot parse {path!r}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path!r} must contain an object at top level")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def parse_cli(argv: Sequence[str], cls: type[T], *, base: T | None = None) -> tuple[T, list[str]]:
    """``[--config FILE] [key=value ...] [positional ...]`` over ``base`` (else the defaults) -> (cfg, rest)."""
    path, overrides, rest, args = None, [], [], iter(argv)
    for arg in args:
        if arg == "--config" or arg.startswith("--config="):
            if path is not None:
                raise UserError("--config given more than once")
            path = arg[len("--config="):] if "=" in arg else next(args, "")
            if not path:
                raise UserError("--config needs a file path")
        elif arg.startswith("-") and len(arg) > 1:
            raise UserError(f"unknown option {arg!r} (settings are given as key=value, e.g. lr=1e-3)")
        else:
            (overrides if "=" in arg else rest).append(arg)
    cfg = base if base is not None else cls()
    if path is not None:
        cfg = from_dict(cls, {**(flatten(to_dict(base)) if base is not None else {}), **flatten(_read_file(path))})
    return apply_overrides(cfg, overrides), rest


def format_help(cfg: Any) -> str:
    """One line per setting, ``key (or short key): type = value``, for ``--help`` (a class: its defaults)."""
    cfg, lines = cfg() if isinstance(cfg, type) else cfg, []
    for path, value in flatten(to_dict(cfg)).items():
        keys, depth, tp = _spellings(type(cfg))[path], path.count("."), _type(type(cfg), path)
        shown = next((k for k in keys if k != path and k.count(".") == depth), path)  # a plain field's alias
        short = ", ".join(k for k in keys if k.count(".") < depth)
        name = tp.__name__ if isinstance(tp, type) and typing.get_origin(tp) is None else str(tp)
        lines.append(f"{shown}{f' (or {short})' if short else ''}: {name.replace('typing.', '')} = {json.dumps(value)}")
    return "\n".join(lines)

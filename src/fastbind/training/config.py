"""Typed configs: dataclasses in, dotted ``key=value`` overrides, JSON/TOML files out.

Every recipe and model describes its settings as a (possibly nested) dataclass with
defaults. This module turns such a dataclass into a command line without any argparse
boilerplate: values are parsed and type-checked against the field annotations, unknown
keys are rejected with a suggestion, and the resolved config round-trips through JSON so
it can be stored in the run folder and in every checkpoint.

Supported field annotations: ``int``, ``float`` (accepts ints and ``1e-3``), ``bool``
(``true/false/1/0/yes/no/on/off``), ``str``, ``pathlib.Path``, ``Optional[X]`` /
``X | None`` (``none`` or ``null``), ``Literal[...]``, ``tuple[X, ...]``, ``tuple[X, Y]``,
``list[X]`` (JSON-ish ``[1,2]`` or comma separated ``1,2``; elements may not contain
commas), ``dict[str, X]`` (JSON), ``Any``, and nested dataclasses (addressed with dotted
keys). Classes should use ``from __future__ import annotations`` freely; annotations are
resolved with :func:`typing.get_type_hints`, so nested config classes must be defined at
module level.

Example (config classes live at module level, e.g. beside their recipe)::

    from dataclasses import dataclass, field
    from typing import Literal

    @dataclass
    class Model:
        hidden: int = 256
        head: Literal["softmax", "hebbian"] = "softmax"

    @dataclass
    class Train:
        model: Model = field(default_factory=Model)
        lr: float = 2e-3
        buckets: tuple[int, ...] = (100, 1000)

    cfg = apply_overrides(Train(), ["model.hidden=512", "lr=1e-3", "buckets=[10,100]"])
    # cfg.model.hidden == 512, cfg.lr == 0.001, cfg.buckets == (10, 100)
    to_dict(cfg)["model"]               # {"hidden": 512, "head": "softmax"}
    cfg, rest = parse_cli(["runs/ptb", "model.head=hebbian"], Train)
    # cfg.model.head == "hebbian", rest == ["runs/ptb"]
    apply_overrides(cfg, ["model.hiden=1"])
    # UserError: unknown key 'model.hiden' (did you mean 'model.hidden'?)

Other names for a key are declared on the field with :func:`alias` (one mechanism for both
uses): on a plain field they are other spellings of it (``lam = alias("lambda", default=0.0)``
lets users type ``cache.lambda=``, ``lambda`` being a Python keyword); on a section they are
short keys for settings inside it (``model = alias("head", "T", default_factory=Model)``
lets users type ``head=`` for ``model.head``). Overrides accept them, ``--help`` shows them,
and ``to_dict`` keeps the field names, so saved configs do not depend on them.

Command lines look like ``[--config FILE] [key=value ...] [positional ...]``; the layers
apply in that order (defaults, then the file, then the overrides, later overrides win).
Anything after a bare ``--`` is positional even if it contains ``=``.

Every problem a user can fix (unknown key, bad value, unreadable file) raises
:class:`fastbind.errors.UserError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import pathlib
import re
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union

from fastbind.errors import UserError
from fastbind.training.checkpoint import atomic_write

__all__ = [
    "alias",
    "apply_overrides",
    "format_help",
    "from_dict",
    "load_config_file",
    "parse_cli",
    "resolve_key",
    "save_config",
    "to_dict",
]

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NONE = {"none", "null"}
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# --------------------------------------------------------------------------- introspection


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of ``cls`` (string annotations evaluated once, then cached)."""
    try:
        return typing.get_type_hints(cls)
    except NameError as exc:  # a programming error, not a user one
        raise TypeError(
            f"cannot resolve the annotations of {cls.__qualname__}: {exc}; "
            "config dataclasses (and the classes they reference) must be defined at module level"
        ) from exc


def _init_fields(cls: type) -> list[dataclasses.Field]:
    # Fields with init=False cannot be set through the constructor, so they are neither
    # serialized nor overridable; this keeps to_dict/from_dict an exact round trip.
    return [f for f in dataclasses.fields(cls) if f.init]


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return typing.get_args(tp)
    return None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    text = str(tp).replace("typing.", "")
    return text


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key (sections and leaves, aliases included) of a config class, for suggestions."""
    keys: list[str] = []
    hints = _hints(cls)
    for f in _init_fields(cls):
        key = prefix + f.name
        keys.append(key)
        sub = _dataclass_in(hints[f.name])
        if sub is not None:
            keys.extend(_all_keys(sub, key + "."))
    keys += [prefix + name for name in _alias_map(cls)]
    return keys


# --------------------------------------------------------------------------- aliases

_ALIASES = "fastbind.config.aliases"  # dataclass field metadata key


def alias(*names: str, **field_kwargs: Any) -> Any:
    """A dataclass field that ``key=value`` overrides also reach under other ``names``.

    A name is a key at the level of the class that declares the field. On a plain field it
    stands for the field itself; on a section (a nested dataclass) it stands for the
    section's own key of the same name, so a setting people change often gets a short key::

        @dataclass
        class Cache:
            lam: float = alias("lambda", default=0.0)     # cache.lambda=0.1 sets cache.lam

        @dataclass
        class Train:
            model: Model = alias("head", "T", default_factory=Model)   # head=hebbian sets model.head
            cache: Cache = field(default_factory=Cache)

    :func:`apply_overrides` and :func:`parse_cli` accept the names, :func:`format_help`
    shows them (a plain field's first name is how its key is shown), and :func:`to_dict`
    and config files keep the field names.

    Args:
        *names: The other names (no dots); they must not clash with a field or another
            alias of the same class.
        **field_kwargs: Passed to :func:`dataclasses.field` (``default=``,
            ``default_factory=``, ``metadata=`` ...).
    """
    if not names:
        raise TypeError("alias() needs at least one name")
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise TypeError(f"an alias must be a single key without dots, got {name!r}")
    metadata = {**(field_kwargs.pop("metadata", None) or {}), _ALIASES: tuple(names)}
    return dataclasses.field(metadata=metadata, **field_kwargs)


@functools.cache
def _alias_map(cls: type) -> dict[str, str]:
    """Alias -> the dotted path (relative to ``cls``) it stands for, for one config class."""
    hints = _hints(cls)
    fields = {f.name for f in _init_fields(cls)}
    out: dict[str, str] = {}
    for f in _init_fields(cls):
        sub = _dataclass_in(hints[f.name])
        for name in f.metadata.get(_ALIASES, ()):
            if name in fields or name in out:
                raise TypeError(f"{cls.__qualname__}: alias {name!r} of {f.name!r} clashes with a field or alias")
            if sub is not None and name not in {g.name for g in _init_fields(sub)} and name not in _alias_map(sub):
                raise TypeError(f"{cls.__qualname__}.{f.name}: {sub.__qualname__} has no key {name!r} to alias")
            out[name] = f"{f.name}.{name}" if sub is not None else f.name
    return out


def resolve_key(cls: type, key: str) -> str:
    """The field path a dotted key stands for, aliases resolved (``head`` -> ``model.head``).

    Parts that name nothing are kept as they are, so an unknown key comes back unchanged
    (and :func:`apply_overrides` reports it).
    """
    todo = key.split(".")
    out: list[str] = []
    current: type | None = cls
    while todo:
        part = todo.pop(0)
        if current is not None:
            fields = {f.name for f in _init_fields(current)}
            aliases = _alias_map(current)  # also checks the declarations
            if part not in fields and part in aliases:
                part, *rest = aliases[part].split(".")
                todo = rest + todo
            current = _dataclass_in(_hints(current)[part]) if part in fields else None
        out.append(part)
    return ".".join(out)


def _spellings(root: type) -> dict[str, list[str]]:
    """Field path of every leaf -> every key users can type for it, the field path first."""
    out: dict[str, list[str]] = {}

    def walk(cls: type, typed: str) -> None:
        for name in [f.name for f in _init_fields(cls)] + list(_alias_map(cls)):
            key = typed + name
            path = resolve_key(root, key)
            sub = _dataclass_in(_type_at(root, path))
            if sub is not None:
                walk(sub, key + ".")
            else:
                keys = out.setdefault(path, [path])
                if key not in keys:
                    keys.append(key)

    walk(root, "")
    return out


def _type_at(root: type, path: str) -> Any:
    cls: Any = root
    tp: Any = root
    for part in path.split("."):
        tp = _hints(cls)[part]
        cls = _dataclass_in(tp)
    return tp


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass type of a field annotated ``C`` or ``Optional[C]``, else None."""
    if _is_dataclass_type(tp):
        return tp
    args = _union_args(tp)
    if args is not None:
        classes = [a for a in args if _is_dataclass_type(a)]
        if len(classes) == 1 and all(a is type(None) or a is classes[0] for a in args):
            return classes[0]
    return None


def _unknown_key(key: str, root: type) -> UserError:
    matches = difflib.get_close_matches(key, _all_keys(root), n=1, cutoff=0.6)
    if matches:
        return UserError(f"unknown key {key!r} (did you mean {matches[0]!r}?)")
    section, _, _ = key.rpartition(".")
    return UserError(f"unknown key {key!r} (valid keys: {', '.join(_section_keys(root, section))})")


def _section_keys(root: type, section: str) -> list[str]:
    cls = root
    if section:
        for part in section.split("."):
            names = {f.name: f for f in _init_fields(cls)}
            sub = _dataclass_in(_hints(cls)[part]) if part in names else None
            if sub is None:
                return [f.name for f in _init_fields(root)]
            cls = sub
    prefix = section + "." if section else ""
    return [prefix + f.name for f in _init_fields(cls)]


# --------------------------------------------------------------------------- renamed keys


def _renamed(root: type, key: str) -> str:
    """``key`` under its current name: a root config class may declare ``RENAMED: ClassVar[dict]``
    (old dotted key -> new dotted key, a section or a leaf), which command lines and saved
    ``config.json`` files of older runs both go through."""
    for old, new in getattr(root, "RENAMED", {}).items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return key


def _rename_dict(root: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """A nested dict with the keys of ``root.RENAMED`` moved to their new places."""
    out = json.loads(json.dumps(data)) if getattr(root, "RENAMED", None) else dict(data)
    for old, new in getattr(root, "RENAMED", {}).items():
        *parents, leaf = old.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        *parents, leaf = new.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node.setdefault(leaf, value)
    return out


# --------------------------------------------------------------------------- to / from dict


def to_dict(cfg: Any) -> dict[str, Any]:
    """Convert a config dataclass instance to a nested, JSON-serializable dict.

    Tuples become lists and paths become strings, so ``json.dumps`` always works and
    ``from_dict(type(cfg), to_dict(cfg)) == cfg``.

    Args:
        cfg: A dataclass instance.

    Returns:
        A new dict with one entry per ``init`` field, nested for nested dataclasses.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(cfg).__name__}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in _init_fields(type(cfg))}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], *, _prefix: str = "", _root: type | None = None) -> T:
    """Build a config of type ``cls`` from a (nested) dict, checking every value's type.

    Keys missing from ``data`` take the dataclass defaults, so a file may set only what
    it changes. Values must already have the right JSON type (``3`` for an int, ``"adam"``
    for a string); ints are accepted for floats and lists for tuples.

    Args:
        cls: The config dataclass.
        data: Mapping from field name to value (nested mappings for nested dataclasses).

    Returns:
        A new ``cls`` instance.

    Raises:
        UserError: An unknown key (named with its dotted path and a suggestion), a value of
            the wrong type, or a required field that is missing.
    """
    root = _root or cls
    if _root is None and isinstance(data, Mapping):
        data = _rename_dict(cls, data)
    if not _is_dataclass_type(cls):
        raise TypeError(f"from_dict expects a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        where = f"section {_prefix[:-1]!r}" if _prefix else "config"
        raise UserError(f"{where} must be a table/object, got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in _init_fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{_prefix}{name}"
        if name not in fields:
            raise _unknown_key(key, root)
        kwargs[name] = _convert(value, hints[name], key, root)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"missing required key {_prefix + name!r}")
    return _construct(cls, kwargs, _prefix)


def _construct(cls: type[T], kwargs: dict[str, Any], prefix: str) -> T:
    try:
        return cls(**kwargs)
    except UserError:
        raise
    except (TypeError, ValueError) as exc:
        # __post_init__ validation speaks for the user's values, so surface it as such.
        where = f" in section {prefix[:-1]!r}" if prefix else ""
        raise UserError(f"invalid {cls.__name__} config{where}: {exc}") from exc


def _bad(key: str, value: Any, expected: str) -> UserError:
    return UserError(f"bad value for {key!r}: expected {expected}, got {value!r}")


def _item_types(tp: Any, items: list[Any], key: str, text: str | None = None) -> list[tuple[Any, Any]]:
    """Pair each item of a tuple/list value with its annotated element type.

    ``tuple[X, ...]``, ``list[X]`` and bare ``tuple``/``list`` take any length; a fixed
    ``tuple[X, Y]`` must have exactly that many items (``text`` is quoted in the error).
    """
    args = typing.get_args(tp)
    fixed = (typing.get_origin(tp) is tuple or tp is tuple) and args and not (len(args) == 2 and args[1] is Ellipsis)
    if not fixed:
        return [(v, args[0] if args else Any) for v in items]
    if len(args) != len(items):
        where = f" in {text!r}" if text is not None else ""
        raise UserError(f"bad value for {key!r}: expected {len(args)} items, got {len(items)}{where}")
    return list(zip(items, args, strict=True))


def _convert(value: Any, tp: Any, key: str, root: type) -> Any:
    """Type-check an already-parsed (JSON/TOML) value against an annotation."""
    if tp is Any or tp is object:
        return value
    if _is_dataclass_type(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        return from_dict(tp, value, _prefix=key + ".", _root=root)
    union = _union_args(tp)
    if union is not None:
        if value is None:
            if type(None) in union:
                return None
            raise _bad(key, value, _type_name(tp))
        errors = []
        for arg in union:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, root)
            except UserError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise _bad(key, value, _type_name(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            # bool is an int subclass: `True` must not satisfy Literal[1].
            if value == choice and type(value) is type(choice):
                return choice
        raise UserError(f"bad value for {key!r}: {value!r} is not one of {_choices(choices)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _bad(key, value, "a boolean")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _bad(key, value, "an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _bad(key, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _bad(key, value, "a string")
    if isinstance(tp, type) and issubclass(tp, pathlib.PurePath):
        if isinstance(value, (str, pathlib.PurePath)):
            return tp(value)
        raise _bad(key, value, "a path string")
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _bad(key, value, "a list")
        items = list(value)
        converted = [_convert(v, t, f"{key}[{i}]", root) for i, (v, t) in enumerate(_item_types(tp, items, key))]
        return tuple(converted) if origin is tuple or tp is tuple else converted
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _bad(key, value, "a table/object")
        args = typing.get_args(tp)
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, key, root): _convert(v, vt, f"{key}.{k}", root) for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _bad(key, value, tp.__name__)
    raise TypeError(f"unsupported config annotation {tp!r} for {key!r}")


def _choices(choices: Sequence[Any]) -> str:
    return ", ".join(repr(c) if not isinstance(c, str) else c for c in choices)


# --------------------------------------------------------------------------- string parsing


def _parse(text: str, tp: Any, key: str, root: type) -> Any:
    """Parse a command-line string into a value of annotation ``tp``."""
    stripped = text.strip()
    if tp is Any or tp is object:
        try:
            return json.loads(stripped)
        except ValueError:
            return text
    if _is_dataclass_type(tp):
        example = _init_fields(tp)[0].name if _init_fields(tp) else "field"
        raise UserError(f"{key!r} is a section; set its fields instead, e.g. {key}.{example}=...")
    union = _union_args(tp)
    if union is not None:
        if stripped.lower() in _NONE and type(None) in union:
            return None
        options = [a for a in union if a is not type(None)]
        for arg in options:
            try:
                return _parse(text, arg, key, root)
            except UserError as exc:
                if len(options) == 1:
                    raise exc
        raise _bad(key, text, _type_name(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if isinstance(choice, bool):
                if stripped.lower() in (_TRUE if choice else _FALSE):
                    return choice
            elif stripped == str(choice):
                return choice
        raise UserError(f"bad value for {key!r}: {text!r} is not one of {_choices(choices)}")
    if tp is bool:
        low = stripped.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise UserError(f"bad value for {key!r}: expected a boolean (true/false/yes/no/1/0), got {text!r}")
    if tp is int:
        try:
            return int(stripped)
        except ValueError:
            pass
        # Accept "1e6" for a step count, but only when it is a whole number.
        try:
            number = float(stripped)
        except ValueError:
            number = math.nan
        if math.isfinite(number) and number.is_integer():
            return int(number)
        raise _bad(key, text, "an integer")
    if tp is float:
        try:
            return float(stripped)
        except ValueError:
            raise _bad(key, text, "a number") from None
    if tp is str:
        return text
    if isinstance(tp, type) and issubclass(tp, pathlib.PurePath):
        return tp(text)
    if origin in (tuple, list) or tp in (tuple, list):
        items = _split_list(stripped)
        parsed = [_parse(v, t, f"{key}[{i}]", root) for i, (v, t) in enumerate(_item_types(tp, items, key, text))]
        return tuple(parsed) if origin is tuple or tp is tuple else parsed
    if origin is dict or tp is dict:
        try:
            value = json.loads(stripped)
        except ValueError:
            raise _bad(key, text, 'a JSON object such as {"a": 1}') from None
        return _convert(value, tp, key, root)
    raise UserError(f"{key!r} ({_type_name(tp)}) cannot be set from the command line")


def _split_list(text: str) -> list[str]:
    """Split ``[1, 2]``, ``1,2`` or ``["a","b"]`` into element strings."""
    if text.startswith("[") != text.endswith("]"):
        raise UserError(f"malformed list {text!r} (use [1,2,3] or 1,2,3)")
    if text.startswith("["):
        text = text[1:-1].strip()
    if not text:
        return []
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise UserError(f"malformed list {text!r}: empty item")
    # Allow JSON-style quoted strings; quotes are not part of the value.
    return [item[1:-1] if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'" else item for item in items]


# --------------------------------------------------------------------------- overrides


def apply_overrides(cfg: T, overrides: Sequence[str]) -> T:
    """Return a copy of ``cfg`` with dotted ``key=value`` overrides applied.

    Args:
        cfg: A config dataclass instance (left unchanged).
        overrides: Items such as ``"model.hidden=512"``, ``"optim.lr=1e-3"``,
            ``"tied=false"``, ``"buckets=[100,1000]"``, ``"ckpt=none"``. Later items win.

    Returns:
        A new config instance of the same type.

    Raises:
        UserError: A malformed item, an unknown key (with a did-you-mean suggestion) or a
            value that does not parse as the field's type.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not one string")
    root = type(cfg)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"malformed override {item!r} (expected key=value)")
        if not _KEY_RE.match(key):
            raise UserError(f"malformed override {item!r}: {key!r} is not a dotted field name")
        path = resolve_key(root, _renamed(root, key))
        cfg = _set(cfg, path.split("."), text, path, root, key)
    return cfg


def _set(cfg: Any, parts: list[str], text: str, path: str, root: type, typed: str) -> Any:
    """Set the field ``path`` (``parts`` of it still to walk) from ``text``; errors name ``typed``."""
    cls = type(cfg)
    name = parts[0]
    fields = {f.name for f in _init_fields(cls)}
    if name not in fields:
        raise _unknown_key(typed, root)
    tp = _hints(cls)[name]
    prefix = path[: len(path) - len(".".join(parts))]
    if len(parts) == 1:
        value = _parse(text, tp, typed, root)
    else:
        sub_cls = _dataclass_in(tp)
        if sub_cls is None:
            raise _unknown_key(typed, root)
        current = getattr(cfg, name)
        if current is None:
            # An Optional section that is off: setting one of its fields turns it on.
            current = _construct(sub_cls, {}, prefix + name + ".")
        value = _set(current, parts[1:], text, path, root, typed)
    return _replace(cfg, {name: value}, prefix)


def _replace(cfg: T, changes: dict[str, Any], prefix: str) -> T:
    try:
        return dataclasses.replace(cfg, **changes)
    except UserError:
        raise
    except (TypeError, ValueError) as exc:
        where = f" in section {prefix[:-1]!r}" if prefix else ""
        raise UserError(f"invalid {type(cfg).__name__} config{where}: {exc}") from exc


# --------------------------------------------------------------------------- files


def load_config_file(path: str | os.PathLike[str], cls: type[T]) -> T:
    """Read a ``.json`` or ``.toml`` config file into ``cls`` (missing keys keep defaults).

    Args:
        path: File path; the suffix picks the format.
        cls: The config dataclass.

    Returns:
        A ``cls`` instance.

    Raises:
        UserError: Missing or unparsable file, unsupported suffix, unknown keys or bad
            values. Reading TOML needs Python 3.11+ (``tomllib``) or the ``tomli`` package.
    """
    return from_dict(cls, _read_file(path))


PRESET_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def presets() -> list[str]:
    """Names of the config presets shipped with fastbind (usable as ``--config NAME``)."""
    return sorted(f.stem for f in PRESET_DIR.glob("*.json"))


def _read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON/TOML config; a bare preset name resolves to ``fastbind/configs/NAME.json``.

    Top-level keys starting with ``_`` are comments and are dropped.
    """
    p = pathlib.Path(path)
    if not p.exists() and p.suffix == "" and (PRESET_DIR / f"{p.name}.json").is_file():
        p = PRESET_DIR / f"{p.name}.json"
    elif not p.exists() and p.suffix == "" and p.parent == pathlib.Path("."):
        raise UserError(f"no config file or preset named {str(p)!r} (presets: {', '.join(presets())})")
    suffix = p.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise UserError(f"config file {str(p)!r} must end in .json or .toml")
    if not p.is_file():
        raise UserError(f"config file not found: {str(p)!r}")
    if suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"cannot parse {str(p)!r}: {exc}") from None
    else:
        toml = _toml_module()
        try:
            data = toml.loads(p.read_text(encoding="utf-8"))
        except toml.TOMLDecodeError as exc:
            raise UserError(f"cannot parse {str(p)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {str(p)!r} must contain an object at top level")
    return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("_"))}


def _toml_module() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:
        import tomli  # the backport has the same API

        return tomli
    except ImportError:
        raise UserError("reading .toml configs needs Python 3.11+ or `pip install tomli`; use a .json config") from None


def save_config(cfg: Any, path: str | os.PathLike[str]) -> pathlib.Path:
    """Write ``to_dict(cfg)`` as indented JSON, atomically (temp file + rename).

    Not rank-gated: recipes call it from the primary rank. A reader never sees a
    half-written file, even if the process dies mid-write.

    Args:
        cfg: A config dataclass instance.
        path: Destination (parent folders are created).

    Returns:
        The destination path.
    """
    dest = pathlib.Path(path)
    text = json.dumps(to_dict(cfg), indent=2) + "\n"
    atomic_write(dest, lambda fh: fh.write(text.encode("utf-8")))
    return dest


# --------------------------------------------------------------------------- command line


def parse_cli(
    argv: Sequence[str],
    cls: type[T],
    *,
    base: T | None = None,
) -> tuple[T, list[str]]:
    """Parse ``[--config FILE] [key=value ...] [positional ...]`` into a config.

    Layers apply in order: ``base`` (or ``cls()`` defaults), then the ``--config`` file
    (only the keys it sets), then the ``key=value`` overrides in order. Arguments without
    ``=`` (and everything after a bare ``--``) are returned as positionals, in order, for
    the caller to interpret (e.g. ``lm-eval RUN_DIR split=test``).

    Args:
        argv: Arguments after the command name.
        cls: The config dataclass.
        base: Optional starting config instead of the class defaults (e.g. the config saved
            in a run folder).

    Returns:
        ``(cfg, positionals)``.

    Raises:
        UserError: Unknown options, a missing ``--config`` argument, or any error from the
            file or the overrides.
    """
    config_path: str | None = None
    overrides: list[str] = []
    positionals: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            positionals.extend(args[i + 1 :])
            break
        if arg == "--config" or arg.startswith("--config="):
            if config_path is not None:
                raise UserError("--config given more than once")
            if arg == "--config":
                if i + 1 >= len(args):
                    raise UserError("--config needs a file path")
                i += 1
                config_path = args[i]
            else:
                config_path = arg.split("=", 1)[1]
            if not config_path:
                raise UserError("--config needs a file path")
        elif arg.startswith("-") and len(arg) > 1:
            raise UserError(f"unknown option {arg!r} (settings are given as key=value, e.g. lr=1e-3)")
        elif "=" in arg:
            overrides.append(arg)
        else:
            positionals.append(arg)
        i += 1

    if base is not None:
        if not isinstance(base, cls):
            raise TypeError(f"base must be a {cls.__name__}, got {type(base).__name__}")
        cfg = base
        if config_path is not None:
            cfg = from_dict(cls, _merge(to_dict(base), _read_file(config_path)))
    elif config_path is not None:
        cfg = load_config_file(config_path, cls)
    else:
        cfg = from_dict(cls, {})
    return apply_overrides(cfg, overrides), positionals


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def format_help(cfg: Any) -> str:
    """One line per settable key: ``key: type = current value`` (for ``--help`` output).

    A key is shown as users type it: a field with an :func:`alias` under its first alias
    (``cache.lambda``), a setting with a short key followed by it (``model.head (or head)``).

    Args:
        cfg: A config dataclass instance (its current values are shown) or class (its
            defaults are shown; the class must be constructible without arguments).
    """
    if isinstance(cfg, type):
        cfg = cfg()
    spellings = _spellings(type(cfg))
    lines: list[str] = []

    def walk(obj: Any, prefix: str) -> None:
        hints = _hints(type(obj))
        for f in _init_fields(type(obj)):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                walk(value, prefix + f.name + ".")
            else:
                path = prefix + f.name
                keys = spellings.get(path, [path])
                depth = path.count(".")
                # A plain field's own alias replaces its name; shorter keys are listed after it.
                shown = next((k for k in keys[1:] if k.count(".") == depth), path)
                short = [k for k in keys if k.count(".") < depth]
                also = f" (or {', '.join(short)})" if short else ""
                lines.append(f"{shown}{also}: {_type_name(hints[f.name])} = {json.dumps(_plain(value))}")

    walk(cfg, "")
    return "\n".join(lines)

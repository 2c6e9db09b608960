"""Stage settings are dataclasses; this module turns them into CLI options and saved, resolved configs.

Each field becomes `--field-name` (underscores to dashes); its attribute docstring is the help text.
A stage's `__post_init__` raises `ConfigError("--flag: why")`, which the CLI shows as one line.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

from schemabuild.errors import ConfigError  # noqa: F401 - re-exported: `from schemabuild.config import ConfigError`


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right after an annotated field) of a dataclass."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                        and isinstance(nxt.value.value, str):
                    docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def click_options(cls: type, skip: tuple[str, ...] = ()):
    """A decorator adding one click option per dataclass field of `cls`."""
    import click

    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip or not f.init:
                continue
            tp = _unwrap_optional(hints[f.name])
            default = f.default if f.default is not dataclasses.MISSING else None
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f.default_factory()  # type: ignore[misc]
            help_text = docs.get(f.name, "")
            name = flag(f.name)
            origin = typing.get_origin(tp)
            if tp is bool:
                opt = click.option(f"{name}/--no-{name[2:]}", f.name, default=default, show_default=True, help=help_text)
            elif origin in (list, tuple):
                inner = typing.get_args(tp)[0] if typing.get_args(tp) else str
                opt = click.option(name, f.name, multiple=True, type=inner, default=tuple(default or ()),
                                   help=help_text + " (repeatable)")
            elif typing.get_origin(tp) is typing.Literal:
                opt = click.option(name, f.name, type=click.Choice([str(a) for a in typing.get_args(tp)]),
                                   default=default, show_default=True, help=help_text)
            else:
                ptype = {int: int, float: float, Path: click.Path(path_type=Path)}.get(tp, str)
                opt = click.option(name, f.name, type=ptype, default=default,
                                   show_default=default is not None, help=help_text)
            fn = opt(fn)
        return fn

    return decorate


def from_options(cls: type, options: dict[str, Any]):
    """Build `cls` from the CLI's keyword arguments (only its own fields)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in options.items():
        if k in names:
            kwargs[k] = list(v) if isinstance(v, tuple) else v
    return cls(**kwargs)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON or TOML file (`--config`); keys are field names (dashes allowed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: no such file {path}")
    try:
        if path.suffix == ".toml":
            data = _toml().loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line naming the file
        raise ConfigError(f"--config {path}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table/object of settings")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _toml():
    """The TOML parser: the standard library's from Python 3.11, the `tomli` backport on 3.10."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError("--config: reading TOML on Python 3.10 needs `pip install tomli` (or use a JSON file)") from None
    return tomllib


def resolved(cfg: Any) -> dict[str, Any]:
    """The dataclass as a JSON-ready dict (what gets saved into the run folder)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))

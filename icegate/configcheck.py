"""Configuration files, checked and documented: ``icegate config check FILE...`` and
``python -m icegate.configcheck --write docs``.

Each component registers the dataclass of its YAML section in the
``icegate.config_sections`` entry points (``pyproject.toml``): section name ->
``module:Class``. This module imports none of them, so the core stays below the
components (``docs/ARCHITECTURE.md`` §1a).

``check`` reports every problem of a file at once, each with the file and the line it
is on: YAML syntax errors (with the parser's position), unknown sections and fields
with the nearest known name (``relay.vpis: unknown field (did you mean 'vips'?)``),
missing fields, bad values and the rules spanning fields.

``--write DIR`` generates ``DIR/CONFIG.md`` (every field, type, default and the comment
beside it in the source) and ``DIR/config.schema.json`` (JSON Schema 2020-12 of every
registered section, for editors and CI); ``--check DIR`` fails when they are stale.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import click
import yaml

from icegate.cli import output_option
from icegate.config import _ADDRESS, _PORT, nearest, problems

SECTIONS_GROUP = "icegate.config_sections"
SCHEMA_ID = "https://icegate.invalid/config.schema.json"


@cache
def _registered() -> tuple[dict[str, type], dict[str, str]]:
    found: dict[str, type] = {}
    missing: dict[str, str] = {}
    for entry in entry_points(group=SECTIONS_GROUP):
        try:
            module = importlib.import_module(entry.module)
        except ModuleNotFoundError as exc:
            missing[entry.name] = f"{entry.value}: {exc}"
            continue
        cls = getattr(module, entry.attr)
        if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):  # pragma: no cover
            raise TypeError(f"{entry.value} is not a dataclass")
        found[entry.name] = cls
    return dict(sorted(found.items())), missing


def sections() -> dict[str, type]:
    """section name -> its dataclass, for every installed component that registers one."""
    return _registered()[0]


def unavailable() -> dict[str, str]:
    """Sections registered by a component this build cannot import -> why."""
    return _registered()[1]


@dataclass(frozen=True)
class Finding:
    """One problem: where (file, 1-based line when known) and what."""

    file: str
    line: int | None
    field: str
    problem: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.problem}"


def _lines(node: yaml.Node, path: str, out: dict[str, int]) -> None:
    """field path -> 1-based line of its value, for every node under ``node``."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = f"{path}.{key.value}" if path else str(key.value)
            out[child] = key.start_mark.line + 1
            _lines(value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, f"{path}[{i}]", out)


def _line_of(field: str, lines: Mapping[str, int]) -> int | None:
    """The line of ``field``, else of its nearest parent present in the file."""
    while field:
        if field in lines:
            return lines[field]
        field = re.sub(r"(\.[^.\[\]]+|\[\d+\])$", "", field) if re.search(r"[.\[]", field) else ""
    return None


def check(path: Path, only: tuple[str, ...] = ()) -> tuple[list[Finding], list[str]]:
    """Every problem of the YAML file at ``path`` and the sections it checked.
    ``only``: the sections that must be there (none: every known one present, at least one)."""
    name = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        return [Finding(name, None, "file", f"cannot read: {exc.strerror}")], []
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        return [Finding(name, mark.line + 1 if mark else None, "yaml", problem)], []
    if not isinstance(document, Mapping):
        return [Finding(name, 1, "file", "expected a mapping of sections (e.g. relay:, transceiver:)")], []
    lines: dict[str, int] = {}
    if root is not None:
        _lines(root, "", lines)
    known = sections()
    findings: list[Finding] = []
    checked: list[str] = []
    for section in map(str, document):
        if section in unavailable():
            why = f"section not available in this build ({unavailable()[section]})"
            findings.append(Finding(name, lines.get(section), section, why))
        elif section not in known:
            findings.append(
                Finding(name, lines.get(section), section, f"unknown section ({nearest(section, known)})")
            )
    for section in only:
        if section not in document:
            findings.append(Finding(name, None, section, "section is missing"))
    for section, cls in known.items():
        if section not in document:
            continue
        checked.append(section)
        for error in problems(cls, document[section], section):
            findings.append(Finding(name, _line_of(error.field, lines), error.field, error.problem))
    if not checked and not findings:
        findings.append(Finding(name, None, "file", f"no known section (known: {', '.join(known)})"))
    findings.sort(key=lambda f: f.line if f.line is not None else len(lines) + 1)  # in file order
    return findings, checked


# ---- reference docs -----------------------------------------------------------------


def _field_comments(cls: type) -> dict[str, str]:
    """The comment beside each field in the class source: its one-line description."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # pragma: no cover - a class without source
        return {}
    found = {}
    for line in source.splitlines():
        match = re.match(r"^\s{4}(\w+)\s*:[^#]*#\s*(.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return {_PORT: "port", _ADDRESS: "address"}.get(args[1], _type_name(args[0]))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) if not isinstance(a, str) else a for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[1])}"
    if hint is type(None):
        return "null"
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return f"{hint.__name__} (below)"
    return getattr(hint, "__name__", str(hint))


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _plain(value: Any) -> Any:
    """A default as YAML/JSON would spell it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _classes(cls: type, seen: dict[str, type]) -> None:
    """``cls`` and every dataclass its fields hold, in the order they appear."""
    if cls.__name__ in seen:
        return
    seen[cls.__name__] = cls  # one section's classes have distinct names
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        for inner in _dataclasses_in(hints[f.name]):
            _classes(inner, seen)


def _dataclasses_in(hint: Any) -> list[type]:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return [hint]
    return [c for a in typing.get_args(hint) for c in _dataclasses_in(a)]


def markdown() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated by `python -m icegate.configcheck --write docs` from the configuration",
        "dataclasses (do not edit; `tests/unit/test_configcheck.py` fails when it is stale).",
        "Check a file with `icegate config check FILE`; `docs/config.schema.json` is the",
        "same as JSON Schema. Examples: `examples/`. A flag given on the command line",
        "overrides the field it names.",
        "",
    ]
    for section, cls in sections().items():
        out += [f"## Section `{section}`", ""]
        seen: dict[str, type] = {}
        _classes(cls, seen)
        for name, klass in seen.items():
            doc = inspect.getdoc(klass) or ""
            out += [f"### {section}: {name}", ""]
            if doc and not doc.startswith(f"{name}("):
                out += [doc.split("\n\n")[0].replace("\n", " "), ""]
            out += ["| field | type | default | what |", "|---|---|---|---|"]
            hints = typing.get_type_hints(klass, include_extras=True)
            comments = _field_comments(klass)
            for f in dataclasses.fields(klass):
                if not f.init:
                    continue
                default = _default(f)
                shown = (
                    "**required**" if default is dataclasses.MISSING else f"`{json.dumps(_plain(default))}`"
                )
                if dataclasses.is_dataclass(default):
                    shown = "(see below)"
                what = comments.get(f.name, "").replace("|", "\\|")
                kind = _type_name(hints[f.name]).replace("|", "\\|")
                out.append(f"| `{f.name}` | {kind} | {shown} | {what} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _schema_of(hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        if _PORT in args[1:]:
            return {"type": "integer", "minimum": 1, "maximum": 65535}
        if _ADDRESS in args[1:]:
            return {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
        return _schema_of(args[0], defs)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema_of(a, defs) for a in args]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, tuple):
        return {"type": "array", "items": _schema_of(args[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(args[1], defs)}
    if hint is type(None):
        return {"type": "null"}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        name = f"{hint.__module__}.{hint.__qualname__}"  # two components may share a class name
        if name not in defs:
            defs[name] = {}
            defs[name] = _object_schema(hint, defs)
        return {"$ref": f"#/$defs/{name}"}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "string"}
    return {"type": simple[hint]}


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    comments = _field_comments(cls)
    props: dict[str, Any] = {}
    required = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        prop = _schema_of(hints[f.name], defs)
        if f.name in comments:
            prop = {"description": comments[f.name], **prop}
        default = _default(f)
        if default is dataclasses.MISSING:
            required.append(f.name)
        elif not dataclasses.is_dataclass(default):
            prop["default"] = _plain(default)
        props[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def json_schema() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    props = {section: _schema_of(cls, defs) for section, cls in sections().items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "icegate configuration file",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "$defs": dict(sorted(defs.items())),
    }


def generated() -> dict[str, str]:
    """file name -> content of the generated reference."""
    return {
        "CONFIG.md": markdown(),
        "config.schema.json": json.dumps(json_schema(), indent=2, sort_keys=False) + "\n",
    }


# ---- the CLI ----------------------------------------------------------------------------


@click.group(short_help="check configuration files")
def config() -> None:
    """Check configuration files (the reference is docs/CONFIG.md)."""


@config.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--section", "only", multiple=True, help="A section the file must have (repeat; default: any known)."
)
@output_option
def config_check(files: tuple[Path, ...], only: tuple[str, ...], as_json: bool) -> None:
    """Check FILES without starting anything: every problem at once, with file and line.

    Exits 1 when any file has a problem."""
    results = [(path, *check(path, only)) for path in files]
    bad = any(findings for _, findings, _ in results)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {"file": str(p), "sections": s, "problems": [dataclasses.asdict(f) for f in fs]}
                    for p, fs, s in results
                ],
                indent=2,
            )
        )
    else:
        for path, findings, checked in results:
            for finding in findings:
                click.echo(str(finding))
            if not findings:
                click.echo(f"{path}: ok ({', '.join(checked)})")
    if bad:
        count = sum(len(fs) for _, fs, _ in results)
        click.echo(f"icegate: {count} problem{'s' if count != 1 else ''} found", err=True)
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    """``python -m icegate.configcheck --write DIR | --check DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("--write", "--check"):
        print("usage: python -m icegate.configcheck --write DIR | --check DIR", file=sys.stderr)
        return 2
    where = Path(args[1])
    stale = []
    for name, content in generated().items():
        target = where / name
        if args[0] == "--write":
            target.write_text(content)
        elif not target.is_file() or target.read_text() != content:
            stale.append(str(target))
    if stale:
        print(
            f"icegate: stale: {', '.join(stale)} (run python -m icegate.configcheck --write {where})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

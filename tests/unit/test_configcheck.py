"""``icegate config check`` and the generated reference (docs/CONFIG.md, JSON Schema)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from icegate import configcheck
from icegate.config import load
from icegate.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

BROKEN = """\
relay:
  name: edge1
  vpis:
    - {address: 192.0.2.10}
  tunnel: {address4: 10.70.0.1, port: 70000}
  limits: {max_flow: 3}
  mode: fast
rely: {}
transceiver:
  index: 1
  relays: [{address: not-an-ip}]
"""


def write(tmp_path: Path, text: str, name: str = "conf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_problem_at_once_with_lines_and_suggestions(tmp_path: Path) -> None:
    path = write(tmp_path, BROKEN)
    findings, checked = configcheck.check(path)
    got = {(f.line, f.field, f.problem) for f in findings}
    assert got == {
        (3, "relay.vpis", "unknown field (did you mean 'vips'?)"),
        (1, "relay.vips", "required field is missing"),
        (5, "relay.tunnel.port", "expected an integer 1-65535, got 70000"),
        (6, "relay.limits.max_flow", "unknown field (did you mean 'max_flows'?)"),
        (7, "relay.mode", "expected one of 'auto', 'xdp', 'userspace', got 'fast'"),
        (8, "rely", "unknown section (did you mean 'relay'?)"),
        (9, "transceiver.cluster", "required field is missing"),
        (11, "transceiver.relays[0].address", "expected an IP address, got 'not-an-ip'"),
    }
    assert checked == ["relay", "transceiver"]
    assert all(str(f).startswith(f"{path}:{f.line}: {f.field}: ") for f in findings)


def test_a_misspelt_section_is_named_not_a_missing_field(tmp_path: Path) -> None:
    """issue 16: `rleay:` reported `relay.name` missing; now the section itself is named."""
    path = write(tmp_path, "rleay:\n  name: edge1\n")
    findings, _ = configcheck.check(path, only=("relay",))
    assert [(f.line, f.field, f.problem) for f in findings] == [
        (1, "rleay", "unknown section (did you mean 'relay'?)"),
        (None, "relay", "section is missing"),
    ]
    # The daemon's own start-up error suggests the field too.
    with pytest.raises(ConfigError, match=r"relay.vpis: unknown field \(did you mean 'vips'\?\)"):
        load(configcheck.sections()["relay"], write(tmp_path, "relay: {vpis: []}\n", "b.yaml"), "relay")


def test_yaml_syntax_errors_name_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "relay:\n  name: edge1\n  vips: [ {address: 192.0.2.10}\n  tunnel: {}\n")
    findings, checked = configcheck.check(path)
    assert len(findings) == 1 and not checked
    assert findings[0].line == 4 and findings[0].field == "yaml"
    assert str(findings[0]).startswith(f"{path}:4: yaml: ")


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    good = REPO / "examples" / "relay.yaml"
    bad = write(tmp_path, BROKEN)
    ok = CliRunner().invoke(configcheck.config, ["check", str(good)])
    assert ok.exit_code == 0 and ok.output == f"{good}: ok (relay)\n"
    failed = CliRunner().invoke(configcheck.config, ["check", str(good), str(bad)])
    assert failed.exit_code == 1
    assert f"{bad}:5: relay.tunnel.port: expected an integer 1-65535, got 70000" in failed.stdout
    assert failed.stderr == "icegate: 8 problems found\n"
    as_json = CliRunner().invoke(configcheck.config, ["check", "-o", "json", str(bad)])
    report = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and len(report[0]["problems"]) == 8
    assert report[0]["problems"][0] == {"file": str(bad), "line": 1, "field": "relay.vips",
                                        "problem": "required field is missing"}  # fmt: skip
    assert [p["line"] for p in report[0]["problems"]] == [1, 3, 5, 6, 7, 8, 9, 11]  # file order
    missing = CliRunner().invoke(configcheck.config, ["check", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1 and "cannot read" in missing.stdout


def test_generated_docs_are_current() -> None:
    """docs/CONFIG.md and docs/config.schema.json match the dataclasses; if this fails,
    run `python -m icegate.configcheck --write docs`."""
    assert configcheck.main(["--check", str(REPO / "docs")]) == 0


def test_stale_docs_are_reported(tmp_path: Path) -> None:
    assert configcheck.main(["--write", str(tmp_path)]) == 0
    assert configcheck.main(["--check", str(tmp_path)]) == 0
    (tmp_path / "CONFIG.md").write_text("old\n")
    assert configcheck.main(["--check", str(tmp_path)]) == 1


def test_reference_documents_every_field() -> None:
    text = (REPO / "docs" / "CONFIG.md").read_text()
    for section in configcheck.sections():
        assert f"## Section `{section}`" in text
    assert "| `sync_interval_s` | float | `0.5` | full reconciliation of backends and route keys |" in text
    assert "| `name` | str | **required** |" in text


def test_json_schema_agrees_with_the_checker(tmp_path: Path) -> None:
    """The schema accepts what `config check` accepts and rejects the broken file."""
    schema = json.loads((REPO / "docs" / "config.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    checked = 0
    for path in sorted((REPO / "examples").glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        if set(document) <= set(configcheck.sections()):
            assert list(validator.iter_errors(document)) == [], path
            checked += 1
    assert checked >= 2
    errors = list(validator.iter_errors(yaml.safe_load(BROKEN)))
    assert errors

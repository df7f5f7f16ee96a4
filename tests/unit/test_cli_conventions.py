"""The operator CLI's conventions (issue 16; anchors: kubectl, bpftool, cilium-dbg):
help on every option, ``-o table|wide|json`` with ``--json`` and ``--no-headers`` on
every listing, one error style on stderr, options from ``ICEGATE_*`` variables, one flag
name per concept with the old names still accepted but hidden."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from icegate.cli import cli, main

REPO = Path(__file__).resolve().parents[2]


def commands() -> Iterator[tuple[str, click.Command, click.Context]]:
    root = click.Context(cli, info_name="icegate")

    def walk(
        cmd: click.Command, path: str, ctx: click.Context
    ) -> Iterator[tuple[str, click.Command, click.Context]]:
        yield path, cmd, ctx
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, name
                yield from walk(sub, f"{path} {name}", click.Context(sub, parent=ctx, info_name=name))

    yield from walk(cli, "icegate", root)


def test_every_option_has_help() -> None:
    missing = [
        f"{path} {p.opts[0]}"
        for path, cmd, _ in commands()
        for p in cmd.params
        if isinstance(p, click.Option) and not p.hidden and not p.help
    ]
    assert missing == []


LISTINGS = [
    "icegate flows ls",
    "icegate backends ls",
    "icegate stats",
    "icegate relay status",
    "icegate token decode",
]


def test_listings_take_output_json_and_no_headers() -> None:
    found = {path: cmd for path, cmd, _ in commands()}
    for path in LISTINGS:
        opts = {o for p in found[path].params for o in p.opts}
        assert {"-o", "--output", "--json", "--no-headers"} <= opts, path
        output = next(p for p in found[path].params if p.name == "output")
        assert isinstance(output.type, click.Choice) and list(output.type.choices) == [
            "table",
            "wide",
            "json",
        ]


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_one_error_style(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run_main(capsys, "flows", "ls", "--bogus")
    assert (code, out) == (
        2,
        "",
    ) and err == "icegate: No such option '--bogus'. (see 'icegate flows ls --help')\n"
    code, _, err = run_main(capsys, "token", "decode", "AAAA")
    assert code == 1 and err == "icegate: token_length: expected 24 characters, got 4\n"
    code, _, err = run_main(capsys, "config", "check", str(tmp_path / "absent.yaml"))
    assert code == 1 and err == "icegate: 1 problem found\n"
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.startswith("icegate, version ")


def test_options_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICEGATE_CONFIG_CHECK_OUTPUT", "json")
    code, out, _ = run_main(capsys, "config", "check", str(REPO / "examples" / "relay.yaml"))
    assert code == 0 and out.lstrip().startswith("[")
    monkeypatch.setenv("ICEGATE_CONFIG_CHECK_OUTPUT", "text")  # the command line wins over it
    code, out, _ = run_main(capsys, "config", "check", "-o", "json", str(REPO / "examples" / "relay.yaml"))
    assert code == 0 and out.lstrip().startswith("[")


@pytest.mark.parametrize(
    ("path", "new", "old", "param", "value"),
    [
        ("icegate transceiver run", "--vip", "--relay", "relays", ("192.0.2.10:3478",)),
        ("icegate demo", "--name", "--lab-name", "lab_name", "x1"),
        ("icegate relay run", "--listen", "--http-address", None, None),
    ],
)
def test_one_flag_name_per_concept(path: str, new: str, old: str, param: str | None, value: object) -> None:
    cmd, ctx = next((c, x) for p, c, x in commands() if p == path)
    help_text = cmd.get_help(ctx)
    assert new in help_text and not re.search(rf"{old}(?![\w-])", help_text)  # the old name works, hidden
    if param is not None:
        raw = list(value) if isinstance(value, tuple) else [value]
        for flag in (new, old):
            args = [a for v in raw for a in (flag, str(v))]
            assert cmd.make_context(path, args, parent=ctx.parent).params[param] == value


def test_shell_completion_is_documented() -> None:
    text = (REPO / "docs" / "DEPLOYMENT.md").read_text()
    assert "_ICEGATE_COMPLETE=bash_source icegate" in text


def test_shell_completion_completes_commands_and_choices() -> None:
    import os
    import subprocess
    import sys

    def complete(words: str) -> list[str]:
        env = {**os.environ, "_ICEGATE_COMPLETE": "bash_complete", "COMP_WORDS": words}
        env["COMP_CWORD"] = str(len(words.split()) - (0 if words.endswith(" ") else 1))
        argv = [sys.executable, "-c", "from icegate.cli import main; main()"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return [line.split(",", 1)[1] for line in done.stdout.splitlines()]

    assert complete("icegate fl") == ["flows"]
    assert complete("icegate flows ls -o ") == ["table", "wide", "json"]

"""Secrets (route keys, bearer tokens, Redis URLs with a password) from files or the
environment, never from the command line (docs/SECURITY.md).

A command line is readable by every local user in ``/proc/<pid>/cmdline`` and lands in
shell histories and process listings; a file (mode 0600) or the environment of a
service unit is not. The CLIs take ``--<name>-file PATH`` and the CLI's automatic
``ICEGATE_<COMMAND>_<SUBCOMMAND>_<OPTION>`` variable for each secret; a secret still
given as a plain option works, with a warning naming the safer ways. This module is the
one place that reads them: the value then flows into the frozen configuration like any
other field.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

from icegate.errors import ConfigError

log = logging.getLogger(__name__)

MAX_SECRET_BYTES = 4096


def read_secret(path: Path, field: str) -> str:
    """The secret in ``path``: its text without the trailing newline. Fails naming
    ``field`` when the file is missing, empty or too large; warns when other users may
    read it."""
    try:
        info = path.stat()
        if info.st_size > MAX_SECRET_BYTES:
            raise ConfigError(field, f"{path} is {info.st_size} bytes: not a secret file")
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(field, f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(field, f"{path} is not text") from None
    if not text:
        raise ConfigError(field, f"{path} is empty")
    if info.st_mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning(
            "secret file readable by other users field=%s path=%s mode=%o", field, path, info.st_mode & 0o777
        )
    return text


def pick_secret(
    field: str, value: str | None, path: Path | None, *, on_command_line: bool, env: str
) -> str | None:
    """One secret from an option (``value``), its file option (``path``) or the
    environment variable ``env`` (click puts that into ``value``; ``on_command_line``
    tells them apart). Both an option and a file: a configuration error."""
    if value is not None and path is not None:
        raise ConfigError(field, "give the value or its file, not both")
    if path is not None:
        return read_secret(path, field)
    if value is not None and on_command_line:
        log.warning(
            "secret on the command line field=%s: visible in /proc/<pid>/cmdline; use its file option or %s",
            field,
            env,
        )
    return value

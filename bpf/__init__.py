"""The XDP program's C sources (``relay.c`` and its headers), shipped as ``icegate.bpf``.

Nothing here runs: the loader (``controlplane/kernel/loader.py``) compiles these files with
bcc at start, so it needs them as real files on disk.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PROGRAM = "relay.c"


def source_dir() -> Path:
    """The directory holding ``relay.c``, ``shared.h`` and the other headers."""
    return Path(str(resources.files(__name__)))

"""How a benchmark that builds a lab ends: Ctrl-C and SIGTERM go through the teardown and
exit 130; a failure (:class:`~icegate.errors.IcegateError`) is said and exits 1."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from icegate.errors import IcegateError
from labkit.demo import terminate_as_interrupt


@contextlib.contextmanager
def lab_exit_codes(say: Callable[[str], None]) -> Iterator[None]:
    """Run the block with SIGTERM as Ctrl-C; turn an interrupt or a failure into the exit status."""
    try:
        with terminate_as_interrupt():
            yield
    except KeyboardInterrupt:
        say("interrupted")
        raise SystemExit(130) from None
    except IcegateError as exc:
        say(f"failed: {exc}")
        raise SystemExit(1) from None

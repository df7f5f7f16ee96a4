"""scripts/kernel-headers, the step of scripts/setup that makes kernel headers visible to
bcc, run for real against a scratch root: one case per branch of its logic.

The script's overrides (ICEGATE_SETUP_ROOT, _KVER, _ARCH, _APT_GET, _APT_CACHE) exist
for this test only. The fake apt-get "installs" a headers package the way Debian's does:
``/usr/src/linux-headers-<ver>/include`` plus the ``/lib/modules/<ver>/build`` link."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from labkit.support import REPO

SCRIPT = Path(REPO) / "scripts" / "kernel-headers"
KVER = "6.18.44-fc-v1098"  # a custom kernel with no headers package, as on the project's machines

FAKE_APT_GET = """#!/bin/bash
# fake apt-get: "install -y -qq NAME" creates what the headers package NAME would
echo "$*" >> "$ROOT/apt.log"
name=${@: -1}
case "$name" in
  linux-headers-amd64) ver=6.1.0-57-amd64 ;;
  linux-headers-generic) ver=6.8.0-31-generic ;;
  linux-headers-"$KVER") ver=$KVER ;;
  *) exit 100 ;;
esac
[ -z "$BROKEN" ] || exit 0   # a package that installs nothing useful
mkdir -p "$ROOT/usr/src/linux-headers-$ver/include" "$ROOT/lib/modules/$ver"
ln -sfn "$ROOT/usr/src/linux-headers-$ver" "$ROOT/lib/modules/$ver/build"
"""
FAKE_APT_CACHE = """#!/bin/bash
# fake apt-cache: "show NAME" succeeds only for the packages in $AVAILABLE
[ "$1" = show ] && [[ " $AVAILABLE " == *" $2 "* ]]
"""


class Scratch:
    def __init__(self, root: Path) -> None:
        self.root = root
        for name, text in (("apt-get", FAKE_APT_GET), ("apt-cache", FAKE_APT_CACHE)):
            path = root / "bin" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(0o755)
        (root / "etc").mkdir()
        self.os_release("debian")

    def os_release(self, distro: str) -> None:
        (self.root / "etc" / "os-release").write_text(f"ID={distro}\nNAME={distro}\n")

    def installed_headers(self, ver: str) -> None:
        """Headers already installed by the distribution's package."""
        (self.root / "usr" / "src" / f"linux-headers-{ver}" / "include").mkdir(parents=True)
        (self.root / "lib" / "modules" / ver).mkdir(parents=True, exist_ok=True)
        (self.root / "lib" / "modules" / ver / "build").symlink_to(
            self.root / "usr" / "src" / f"linux-headers-{ver}"
        )

    def run(self, available: str = "", broken: bool = False) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ["PATH"],
            "ROOT": str(self.root),
            "KVER": KVER,
            "AVAILABLE": available,
            "BROKEN": "1" if broken else "",
            "ICEGATE_SETUP_ROOT": str(self.root),
            "ICEGATE_SETUP_KVER": KVER,
            "ICEGATE_SETUP_ARCH": "amd64",
            "ICEGATE_SETUP_APT_GET": str(self.root / "bin" / "apt-get"),
            "ICEGATE_SETUP_APT_CACHE": str(self.root / "bin" / "apt-cache"),
        }
        return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)

    def installs(self) -> list[str]:
        log = self.root / "apt.log"
        return [line.split()[-1] for line in log.read_text().splitlines()] if log.exists() else []

    @property
    def kernel_modules(self) -> Path:
        return self.root / "lib" / "modules" / KVER

    def headers_visible(self) -> bool:
        return (self.kernel_modules / "build" / "include").is_dir()


@pytest.fixture
def scratch(tmp_path: Path) -> Scratch:
    return Scratch(tmp_path)


def test_matching_headers_present_nothing_to_do(scratch: Scratch) -> None:
    scratch.installed_headers(KVER)
    proc = scratch.run()
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert scratch.installs() == []


def test_distribution_has_headers_for_the_kernel(scratch: Scratch) -> None:
    proc = scratch.run(available=f"linux-headers-{KVER}")
    assert proc.returncode == 0, proc.stderr
    assert scratch.installs() == [f"linux-headers-{KVER}"]
    assert scratch.headers_visible() and not scratch.kernel_modules.is_symlink()


def test_no_headers_and_no_lib_modules_at_all(scratch: Scratch) -> None:
    """The project's fresh machines: a custom kernel, not even /lib/modules exists."""
    assert not (scratch.root / "lib").exists()
    proc = scratch.run()
    assert proc.returncode == 0, proc.stderr
    assert scratch.installs() == ["linux-headers-amd64"]
    assert scratch.kernel_modules.is_symlink()
    assert os.readlink(scratch.kernel_modules) == str(scratch.root / "lib" / "modules" / "6.1.0-57-amd64")
    assert scratch.headers_visible()
    assert "installing linux-headers-amd64" in proc.stderr and "linking" in proc.stderr
    again = scratch.run()  # idempotent: nothing more to do, nothing said
    assert (again.returncode, again.stderr) == (0, "") and scratch.installs() == ["linux-headers-amd64"]


def test_lib_modules_kver_is_a_directory(scratch: Scratch) -> None:
    """Modules are installed for the kernel but no headers: link build/ inside, keep the rest."""
    (scratch.kernel_modules / "kernel").mkdir(parents=True)
    (scratch.kernel_modules / "modules.dep").write_text("")
    proc = scratch.run()
    assert proc.returncode == 0, proc.stderr
    assert not scratch.kernel_modules.is_symlink() and (scratch.kernel_modules / "modules.dep").exists()
    assert (scratch.kernel_modules / "build").is_symlink() and scratch.headers_visible()


def test_generic_headers_already_installed_newest_wins(scratch: Scratch) -> None:
    scratch.installed_headers("6.1.0-9-amd64")
    scratch.installed_headers("6.1.0-57-amd64")  # sort -V: 57 > 9
    proc = scratch.run()
    assert proc.returncode == 0, proc.stderr
    assert scratch.installs() == []  # the generic package is there already
    assert os.readlink(scratch.kernel_modules).endswith("/6.1.0-57-amd64")


def test_stale_link_is_replaced(scratch: Scratch) -> None:
    (scratch.root / "lib" / "modules").mkdir(parents=True)
    scratch.kernel_modules.symlink_to(scratch.root / "lib" / "modules" / "5.10.0-gone-amd64")
    proc = scratch.run()
    assert proc.returncode == 0, proc.stderr
    assert scratch.headers_visible() and os.readlink(scratch.kernel_modules).endswith("/6.1.0-57-amd64")


def test_ubuntu_naming(scratch: Scratch) -> None:
    scratch.os_release("ubuntu")
    proc = scratch.run()
    assert proc.returncode == 0, proc.stderr
    assert scratch.installs() == ["linux-headers-generic"]
    assert os.readlink(scratch.kernel_modules).endswith("/6.8.0-31-generic") and scratch.headers_visible()


@pytest.mark.parametrize("broken", [False, True], ids=["install-fails", "installs-nothing"])
def test_no_headers_to_be_had_says_what_and_how_in_one_line(scratch: Scratch, broken: bool) -> None:
    if not broken:
        (scratch.root / "bin" / "apt-get").write_text("#!/bin/bash\nexit 100\n")
    proc = scratch.run(broken=broken)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("setup: ") and ("install" in lines[-1] or "headers" in lines[-1]), lines
    assert all(line.startswith("setup: no headers for kernel") for line in lines[:-1]), lines  # progress only
    assert not scratch.headers_visible()

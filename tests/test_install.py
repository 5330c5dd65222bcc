"""A plain `pip install .` (no extra) into a fresh virtualenv: every documented command runs.

The dev virtualenv has every extra, so it cannot tell a missing declaration from a present
one; this one has only what pyproject.toml's `dependencies` bring. pip reuses its wheel
cache (the dev bootstrap filled it), so this takes seconds.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ogsd import cli
from ogsd.client import ctl

ROOT = Path(__file__).resolve().parents[1]
# What the build reads; copied so the in-tree build (build/, *.egg-info) stays out of ROOT.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "ogsd")
LAB_COMMANDS = ("up", "set", "roam", "status", "down", "demo", "selftest")  # docs/lab.md
PIP_TIMEOUT_S = 300  # a cold wheel cache downloads the dependencies
RUN_TIMEOUT_S = 60
# Modules that are programs (they run on import), or need the lab extra (servers) or Flask
# from the dev extra (fake_gp_server, openconnect's GlobalProtect test server: a script).
NOT_IMPORTED = ("ogsd.__main__", "ogsd.lab.__main__", "ogsd.lab.servers",
                "ogsd.lab.fake_gp_server")

IMPORT_ALL = f"""
import importlib, pkgutil, ogsd
names = [m.name for m in pkgutil.walk_packages(ogsd.__path__, "ogsd.")]
for name in names:
    if name not in {NOT_IMPORTED!r}:
        importlib.import_module(name)
print(len(names))
"""


class Venv:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.python = path / "bin" / "python"

    def run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`program` from the venv's bin/ (python, ogsd, ogsctl) with `args`."""
        return subprocess.run([str(self.path / "bin" / program), *args], capture_output=True,
                              text=True, timeout=RUN_TIMEOUT_S, check=False)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[Venv, str]:
    """A fresh venv with `pip install <copy of the tree>`; pip's verbose log."""
    base = tmp_path_factory.mktemp("plain-install")
    source = base / "src"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(base / "venv")],
                   check=True, timeout=RUN_TIMEOUT_S)
    venv = Venv(base / "venv")
    # The dev environment's pip installs into the new one (--python): no pip bootstrap.
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv.python),
                           "install", "--verbose", "--no-input", str(source)],
                          capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return venv, done.stdout + done.stderr


def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    # argparse has no public way to list a parser's subcommands.
    return [name for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for name in action.choices]


def test_build_has_no_deprecation_warnings(plain: tuple[Venv, str]) -> None:
    _, log = plain
    assert "deprecat" not in log.lower(), [line for line in log.splitlines()
                                           if "eprecat" in line]
    assert "adding license file 'LICENSE'" in log


def test_only_declared_dependencies_are_installed_and_enough(plain: tuple[Venv, str]) -> None:
    venv, _ = plain
    done = venv.run("python", "-c", IMPORT_ALL)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 20  # the walk found the package
    lab_extra = venv.run("python", "-c", "import cryptography")
    assert lab_extra.returncode == 1  # the lab extra really is absent here


def test_every_documented_command_starts(plain: tuple[Venv, str]) -> None:
    venv, _ = plain
    argvs = [["ogsd", "--help"], ["ogsctl", "--help"], ["python", "-m", "ogsd.lab", "--help"]]
    argvs += [["ogsd", name, "--help"] for name in subcommands(cli.build_parser())]
    argvs += [["ogsctl", name, "--help"] for name in subcommands(ctl.build_parser())]
    argvs += [["python", "-m", "ogsd.lab", name, "--help"] for name in LAB_COMMANDS]
    for argv in argvs:
        done = venv.run(*argv)
        assert (done.returncode, done.stderr) == (0, ""), argv
        assert "usage:" in done.stdout, argv


def test_commands_do_their_work_without_extras(plain: tuple[Venv, str], tmp_path: Path) -> None:
    venv, _ = plain
    state = tmp_path / "state"
    listed = venv.run("ogsd", "cache", "list", "--state-dir", str(state))
    assert (listed.returncode, listed.stdout) == (0, "cache is empty\n"), listed.stderr
    absent = venv.run("ogsctl", "--socket", str(tmp_path / "none.sock"), "status")
    assert absent.returncode == 3
    assert absent.stderr == f"ogsctl: ogsd is not running (no socket at {tmp_path}/none.sock)\n"
    bundle = venv.run("ogsctl", "--socket", str(tmp_path / "none.sock"), "diag", "-o",
                      str(tmp_path / "diag.tar.gz"))
    assert (bundle.returncode, (tmp_path / "diag.tar.gz").exists()) == (0, True), bundle.stderr
    # `ogsd run` imports the daemon (D-Bus, netlink, the socket API) before reading input.
    run = venv.run("ogsd", "run", "--profile", "/nonexistent/p.xml", "--state-dir", str(state),
                   "--socket", str(tmp_path / "s.sock"))
    assert (run.returncode, run.stderr) == (
        2, "ogsd: profile /nonexistent/p.xml: no such file or directory\n")


def test_lab_without_its_extra_says_what_to_install(plain: tuple[Venv, str],
                                                    tmp_path: Path) -> None:
    venv, _ = plain
    for command in ("up", "set", "demo", "selftest"):
        argv = ["python", "-m", "ogsd.lab", command]
        if command in ("up", "set"):
            argv += ["--spec", str(tmp_path / "lab.json")]
        done = venv.run(*argv)
        assert (done.returncode, done.stdout) == (2, ""), command
        assert done.stderr == ("ogsd.lab: the lab needs the 'lab' extra (cryptography is not "
                               "installed): pip install 'ogsd[lab]'\n"), command


def test_the_openconnect_hook_is_installed_executable(plain: tuple[Venv, str]) -> None:
    # ogsctl connect hands it to openconnect as --script (README "Use with openconnect").
    venv, _ = plain
    done = venv.run("python", "-c", "import os; from ogsd.client.connect import HOOK; "
                                    "print(HOOK.parent.parent.name, os.access(HOOK, os.X_OK))")
    assert (done.returncode, done.stdout) == (0, "ogsd True\n"), done.stderr

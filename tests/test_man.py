"""The man pages and bash completions the package installs say what the programs do.

Both are written by hand; these checks keep them in step with the parsers (a command or
option added to `ogsd`/`ogsctl` and not documented fails here) and with config/ogsd.toml
(every key it documents is in ogsd.toml(5)), and groff must format them without a warning.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ogsd import cli
from ogsd.client import ctl

ROOT = Path(__file__).resolve().parents[1]
MAN = ROOT / "man"
COMPLETIONS = ROOT / "contrib" / "bash-completion"
RUN_TIMEOUT_S = 30


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    # argparse has no public way to list a parser's subcommands.
    return {name: sub for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def options(parser: argparse.ArgumentParser) -> set[str]:
    """The parser's own option strings, without -h/--help."""
    return {o for action in parser._actions for o in action.option_strings} - {"-h", "--help"}


def positional_choices(parser: argparse.ArgumentParser) -> set[str]:
    return {str(c) for action in parser._actions
            if not action.option_strings and action.choices is not None
            and not isinstance(action, argparse._SubParsersAction)
            for c in action.choices}


def man_text(page: str) -> str:
    """The page's source with groff's escaped hyphens plain and its font changes out, as a
    reader sees the words."""
    return re.sub(r"\\f[BIRP]", "", (MAN / page).read_text().replace("\\-", "-"))


@pytest.mark.parametrize(("page", "parser"), [("ogsd.8", cli.build_parser()),
                                              ("ogsctl.1", ctl.build_parser())])
def test_man_page_names_every_command_and_option(page: str,
                                                 parser: argparse.ArgumentParser) -> None:
    text = man_text(page)
    words: set[str] = set(options(parser))
    for name, sub in subparsers(parser).items():
        words |= {name} | options(sub) | positional_choices(sub)
        for event, nested in subparsers(sub).items():
            words |= {event} | options(nested)
    missing = sorted(w for w in words if not re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])",
                                                       text))
    assert missing == []


def toml_keys() -> set[str]:
    """Every key config/ogsd.toml documents, set or commented out."""
    text = (ROOT / "config" / "ogsd.toml").read_text()
    return set(re.findall(r"^(?:# )?([a-z_]+) = ", text, re.MULTILINE))


def test_config_page_describes_every_key() -> None:
    keys = toml_keys()
    assert len(keys) > 30  # the parse found the file's keys
    text = man_text("ogsd.toml.5")
    described = set(re.findall(r"^\.B ([a-z_]+)$", text, re.MULTILINE))
    assert sorted(keys - described) == []


@pytest.mark.parametrize("page", ["ogsd.8", "ogsctl.1", "ogsd.toml.5"])
def test_man_page_formats_without_warnings(page: str) -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff not installed (package groff-base)")
    done = subprocess.run(["groff", "-man", "-ww", "-z", "-K", "utf8", str(MAN / page)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert (done.returncode, done.stderr) == (0, "")


def complete(program: str, *words: str) -> set[str]:
    """What the completion offers after `program words...` (the last word being typed)."""
    script = (f'source {COMPLETIONS / program}\n'
              'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))\n'
              f'_{program}\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    done = subprocess.run(["bash", "-c", script, "bash", program, *words],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_ogsctl_completion_follows_the_parser() -> None:
    parser = ctl.build_parser()
    commands = subparsers(parser)
    assert complete("ogsctl", "") == set(commands) | options(parser) | {"--help"}
    assert complete("ogsctl", "ev") == {"evaluate"}
    for name, sub in commands.items():
        offered = complete("ogsctl", name, "")
        expected = (options(sub) | positional_choices(sub) | set(subparsers(sub))
                    | {"--help"})
        if name == "connect":
            expected.add("--")  # everything after it goes to openconnect
        assert offered == expected, name
        for event, nested in subparsers(sub).items():
            assert complete("ogsctl", name, event, "") == (
                options(nested) | options(parser) | {"--help"}), event


def test_ogsd_completion_follows_the_parser() -> None:
    parser = cli.build_parser()
    commands = subparsers(parser)
    assert complete("ogsd", "") == set(commands) | options(parser) | {"--help"}
    for name, sub in commands.items():
        expected = options(sub) | positional_choices(sub) | {"--help"}
        assert complete("ogsd", name, "") == expected, name
    assert complete("ogsd", "cache", "list", "") == {"--state-dir", "--json", "--help"}


def test_completion_offers_files_after_a_path_option(tmp_path: Path) -> None:
    (tmp_path / "ogsd.toml").write_text("")
    assert complete("ogsd", "run", "--config", f"{tmp_path}/og") == {f"{tmp_path}/ogsd.toml"}
    assert complete("ogsctl", "diag", "-o", f"{tmp_path}/og") == {f"{tmp_path}/ogsd.toml"}


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_completions_are_shellcheck_clean() -> None:
    done = subprocess.run(["shellcheck", "--shell=bash", *map(str, COMPLETIONS.iterdir())],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert (done.returncode, done.stdout) == (0, "")

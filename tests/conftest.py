"""Shared test policy.

Tests that need root (network namespaces, the lab) are marked `root`. Without root they
skip with the reason, except under CI=true, where skipping would hide a broken
environment: there they run, and fail if they cannot. Likewise under CI=true any other
skip (a missing dbus-daemon, systemd-analyze, shellcheck...) is a failure, unless the
test is marked `ci_may_skip` because what it needs depends on the kernel or host.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import structlog

pytest_plugins = ["tests.dbus_fixtures", "tests.lab_fixtures"]

IN_CI = os.environ.get("CI", "").lower() == "true"
IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT or IN_CI:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces); run as root or CI=true")
    for item in items:
        if item.get_closest_marker("root") is not None:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if IN_CI and report.skipped and item.get_closest_marker("ci_may_skip") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {reason}"
    return report


@pytest.fixture(autouse=True)
def _structlog_isolated() -> Iterator[None]:
    """A test that configures logging (e.g. through `ogsd.cli.main`) must not leak it."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace (root), deleted afterwards."""
    name = f"ogsdtest-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory uid 65534 can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="ogsd-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)

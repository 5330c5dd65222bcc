"""Shared test policy.

Tests that need root (network namespaces, the lab) are marked `root`. Without root they
skip with the reason, except under CI=true, where skipping would hide a broken
environment: there they run, and fail if they cannot.
"""

from __future__ import annotations

import os

import pytest

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

"""The selftest, as CI runs it: every accuracy claim of issue 3 on this machine."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.lab_fixtures import lab_name, require_root


@pytest.mark.root
@pytest.mark.lab
def test_selftest_passes() -> None:
    require_root()
    done = subprocess.run(
        [sys.executable, "-m", "ogsd.lab", "selftest", "--name", lab_name()],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(done.stdout)  # the table, for the CI log
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout

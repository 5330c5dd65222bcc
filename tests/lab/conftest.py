"""The lab's own tests use its fixtures (until tests/conftest.py lists the plugin)."""

from tests.lab_fixtures import (  # noqa: F401 - fixtures are found by name
    lab_orphans_removed,
    make_lab,
    module_lab_factory,
    session_lab_factory,
)

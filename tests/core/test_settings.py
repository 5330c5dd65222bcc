"""EnableAutomaticServerSelection: the profile's value, its UserControllable, ogsd.toml."""

from __future__ import annotations

import pytest

from ogsd.core.settings import Choice, resolve_enabled

P = "/opt/cisco/anyconnect/profile/corp.xml line 4"
T = "/etc/ogsd/ogsd.toml line 3"


@pytest.mark.parametrize("row", [
    # No profile value: ogsd.toml decides, else on.
    (None, False, None, True, "on by default", False),
    (None, False, False, False, f"[ogs] enabled = false ({T})", False),
    (None, True, True, True, f"[ogs] enabled = true ({T})", False),
    # UserControllable="true": the profile's value is a default ogsd.toml may override.
    (True, True, None, True, f"EnableAutomaticServerSelection is true ({P})", False),
    (False, True, None, False, f"EnableAutomaticServerSelection is false ({P})", False),
    (False, True, True, True, "[ogs] enabled = true", False),
    (True, True, False, False, "the profile lets users choose (UserControllable)", False),
    # UserControllable false or absent: the administrator's value stands.
    (False, False, None, False, "users may not change it (UserControllable is not true)",
     False),
    (False, False, True, False, f"EnableAutomaticServerSelection is false ({P})", True),
    (True, False, False, True, f"EnableAutomaticServerSelection is true ({P})", True),
    (True, False, True, True, "users may not change it", False),  # agreeing: no warning
])
def test_who_decides_whether_ogs_runs(
        row: tuple[bool | None, bool, bool | None, bool, str, bool]) -> None:
    """(profile value, UserControllable, ogsd.toml value) -> enabled, why, warned."""
    profile, controllable, toml, enabled, why_has, ignored = row
    result = resolve_enabled(None if profile is None else Choice(profile, P), controllable,
                             None if toml is None else Choice(toml, T))
    assert result.value is enabled
    assert why_has in result.why
    if ignored:
        assert result.ignored == (
            f"{T}: [ogs] enabled = {str(toml).lower()} is ignored: "
            f"EnableAutomaticServerSelection is {str(profile).lower()} ({P}) without "
            'UserControllable="true"')
    else:
        assert result.ignored is None

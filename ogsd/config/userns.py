"""Which user and group ids an admin setting can match in ogsd's user namespace.

In a user namespace (systemd's `PrivateUsers=yes`, a container) only the ids listed in
/proc/self/uid_map and gid_map exist; the kernel reports every other user, in
SO_PEERCRED as anywhere, as the overflow id 65534 ("nobody"). An admin uid that is not
mapped can never match, group membership cannot be looked up for users that all look
alike, and the overflow id itself would match everybody.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

# The kernel's default /proc/sys/kernel/overflowuid and overflowgid (ogsd's unit hides
# /proc/sys: ProcSubset=pid); what unmapped ids read as.
OVERFLOW_ID = 65534
ALL_IDS = 2**32 - 1  # the identity map of the initial namespace: "0 0 4294967295"
ID_MAPS = {"uid": Path("/proc/self/uid_map"), "gid": Path("/proc/self/gid_map")}
FIX = "run ogsd without PrivateUsers= (the shipped unit does)"


def read_map(kind: str) -> str | None:
    """This process's uid_map or gid_map, or None where there is none to read."""
    try:
        return ID_MAPS[kind].read_text()
    except OSError:
        return None


def ranges(text: str | None) -> list[tuple[int, int]]:
    """(first inside id, count) per map line; no map text means the whole range."""
    if text is None:
        return [(0, ALL_IDS)]
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and all(f.isdigit() for f in fields):
            out.append((int(fields[0]), int(fields[2])))
    return out


def _mapped(value: int, spans: list[tuple[int, int]]) -> bool:
    return any(first <= value < first + count for first, count in spans)


def _covers_users(spans: list[tuple[int, int]]) -> bool:
    """Every ordinary id (0..65533) is mapped: a container's map, not PrivateUsers' few."""
    covered = sum(max(0, min(first + count, OVERFLOW_ID) - max(first, 0))
                  for first, count in spans)  # the kernel refuses overlapping lines
    return covered >= OVERFLOW_ID


def _shown(spans: list[tuple[int, int]]) -> str:
    return ", ".join(str(f) if c == 1 else f"{f}-{f + c - 1}" for f, c in spans) or "none"


def admin_problem(admin_uids: Collection[int], admin_gid: int | None, *,
                  uid_map: str | None, gid_map: str | None) -> str | None:
    """Why these admin settings cannot work here (one line), or None if they can."""
    if OVERFLOW_ID in admin_uids:
        return (f"admin_uids: {OVERFLOW_ID} is the overflow uid (\"nobody\"): every user a "
                "user namespace does not map appears as it, so it would make everyone an "
                "admin")
    if admin_gid == OVERFLOW_ID:
        return (f"admin_group: gid {OVERFLOW_ID} is the overflow gid (\"nogroup\"): every "
                "group a user namespace does not map appears as it, so it would make "
                "everyone an admin")
    uids = ranges(uid_map)
    if missing := sorted(u for u in admin_uids if not _mapped(u, uids)):
        return (f"admin_uids: uid {', '.join(map(str, missing))} does not exist in ogsd's "
                f"user namespace (it maps uids {_shown(uids)}): other users' requests "
                f"arrive as uid {OVERFLOW_ID}, so it can never match; {FIX}")
    if admin_gid is not None and not (_covers_users(uids)
                                      and _mapped(admin_gid, ranges(gid_map))):
        return (f"admin_group: membership cannot be checked in ogsd's user namespace (it "
                f"maps uids {_shown(uids)}): other users' requests arrive as uid "
                f"{OVERFLOW_ID}; {FIX}")
    return None

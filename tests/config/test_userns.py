"""Admin rights when ogsd runs in a user namespace (systemd's PrivateUsers=yes).

There, SO_PEERCRED reports every user the namespace does not map as 65534. The daemon
runs here under `unshare --user --map-root-user`, which maps root alone, as
PrivateUsers=yes maps root and the service's user: clients are real processes of other
host users, the kernel translates their credentials.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import anyio
import pytest

from ogsd.config.userns import admin_problem
from ogsd.wire.api import FORBIDDEN
from tests.daemon.test_api import requests_as
from tests.daemon_helpers import (
    START_WAIT,
    WAIT,
    NotifySocket,
    short_dir,
    write_config,
    write_resolv,
)

IDENTITY = "         0          0 4294967295\n"
PRIVATE_USERS = "         0          0          1\n       999        999          1\n"
CONTAINER = "         0     100000      65536\n"


@pytest.mark.parametrize(("uids", "gid", "uid_map", "problem"), [
    ((1000,), 100, IDENTITY, None),
    ((1000,), 100, CONTAINER, None),
    ((), None, PRIVATE_USERS, None),  # root and ogsd's own uid still work
    ((999,), None, PRIVATE_USERS, None),
    ((65534,), None, IDENTITY, "admin_uids: 65534 is the overflow uid"),
    ((), 65534, IDENTITY, "admin_group: gid 65534 is the overflow gid"),
    ((1000, 2000), None, PRIVATE_USERS,
     "admin_uids: uid 1000, 2000 does not exist in ogsd's user namespace (it maps uids 0, "
     "999): other users' requests arrive as uid 65534, so it can never match; run ogsd "
     "without PrivateUsers= (the shipped unit does)"),
    ((), 999, PRIVATE_USERS,
     "admin_group: membership cannot be checked in ogsd's user namespace (it maps uids 0, "
     "999)"),
    ((70000,), None, CONTAINER, "maps uids 0-65535"),
])
def test_admin_settings_that_cannot_match_are_named(
        uids: tuple[int, ...], gid: int | None, uid_map: str, problem: str | None) -> None:
    found = admin_problem(uids, gid, uid_map=uid_map, gid_map=uid_map)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


# --- the daemon in a user namespace, clients from the host ------------------------------

HOST_USER = 4242  # a host uid the namespace does not map
ROOT_GROUP = 0  # the socket is root's 0660: the client reaches it through this group
UNSHARE = ["unshare", "--user", "--map-root-user"]


@pytest.fixture
def directory() -> Iterator[Path]:
    path = short_dir("ogsd-userns-")
    path.chmod(0o755)  # the other user reaches the socket
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start(directory: Path, stack: ExitStack, extra: str = "", *,
          userns: bool = True) -> subprocess.Popen[bytes]:
    resolv = directory / "resolv.conf"
    write_resolv(resolv, "home.example", ["127.0.53.1"])
    # Nothing listens on the gateway: rounds fall back at once; no decision is needed.
    config = write_config(directory / "ogsd.toml", [("127.0.0.1", 9)], resolv_conf=resolv,
                          extra=extra)
    notify = stack.enter_context(NotifySocket(directory / "notify"))
    proc = subprocess.Popen(
        [*(UNSHARE if userns else []), sys.executable, "-m", "ogsd", "-q", "run", "--config",
         str(config), "--state-dir", str(directory / "state"), "--socket",
         str(directory / "ogsd.sock")],
        env={"NOTIFY_SOCKET": str(notify.path), "PATH": "/usr/bin:/bin",
             "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/ogsd-test/bus"},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stack.callback(proc.wait, WAIT)
    stack.callback(proc.kill)
    if proc.stderr is not None:
        stack.callback(proc.stderr.close)
    notify.expect("READY=1", START_WAIT)
    return proc


WRITE = {"id": 1, "method": "notify.sleep"}


@pytest.mark.root
@pytest.mark.anyio
async def test_in_a_user_namespace_root_is_admin_and_other_users_are_not(
        directory: Path) -> None:
    sock = directory / "ogsd.sock"
    with ExitStack() as stack:
        start(directory, stack)
        other = await anyio.to_thread.run_sync(
            requests_as, HOST_USER, ROOT_GROUP, sock, [WRITE])
        root = await anyio.to_thread.run_sync(requests_as, 0, 0, sock, [WRITE])
    assert other[0]["error"]["code"] == FORBIDDEN
    # What the kernel reported to the daemon: the host user as the overflow uid.
    assert "uid 65534 is not an admin" in other[0]["error"]["message"]
    assert root == [{"id": 1, "result": {"message": "sleep recorded"}}]


@pytest.mark.root
@pytest.mark.parametrize(("extra", "message"), [
    (f"admin_uids = [{HOST_USER}]\n",
     f"ogsd: [daemon] admin_uids: uid {HOST_USER} does not exist in ogsd's user namespace "
     "(it maps uids 0): other users' requests arrive as uid 65534, so it can never match; "
     "run ogsd without PrivateUsers= (the shipped unit does)\n"),
    ('admin_group = "users"\n',
     "ogsd: [daemon] admin_group: membership cannot be checked in ogsd's user namespace (it "
     "maps uids 0): other users' requests arrive as uid 65534; run ogsd without "
     "PrivateUsers= (the shipped unit does)\n"),
])
def test_in_a_user_namespace_admins_that_cannot_match_are_refused(
        directory: Path, extra: str, message: str) -> None:
    resolv = directory / "resolv.conf"
    write_resolv(resolv, "home.example", ["127.0.53.1"])
    config = write_config(directory / "ogsd.toml", [("127.0.0.1", 9)], resolv_conf=resolv,
                          extra=extra)
    done = subprocess.run(
        [*UNSHARE, sys.executable, "-m", "ogsd", "-q", "run", "--config", str(config),
         "--state-dir", str(directory / "state"), "--socket", str(directory / "ogsd.sock")],
        capture_output=True, text=True, timeout=START_WAIT, check=False,
        env={"PATH": "/usr/bin:/bin",
             "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/ogsd-test/bus"})
    assert (done.returncode, done.stderr) == (1, message)
    assert not (directory / "ogsd.sock").exists()


@pytest.mark.root
@pytest.mark.anyio
async def test_without_a_user_namespace_admin_uids_match_real_users(directory: Path) -> None:
    """As under the shipped unit (no PrivateUsers=): a listed uid is an admin, another
    user is not, each as itself."""
    sock = directory / "ogsd.sock"
    with ExitStack() as stack:
        start(directory, stack, f"admin_uids = [{HOST_USER}]\n", userns=False)
        listed = await anyio.to_thread.run_sync(
            requests_as, HOST_USER, ROOT_GROUP, sock, [WRITE])
        unlisted = await anyio.to_thread.run_sync(
            requests_as, HOST_USER + 1, ROOT_GROUP, sock, [WRITE])
    assert listed == [{"id": 1, "result": {"message": "sleep recorded"}}]
    assert f"uid {HOST_USER + 1} is not an admin" in unlisted[0]["error"]["message"]


@pytest.mark.parametrize(("extra", "message"), [
    ('admin_group = "no-such-group-ogsd"\n',
     "ogsd: [daemon] admin_group: unknown group 'no-such-group-ogsd'\n"),  # was a traceback
    ('admin_group = "nogroup"\n',
     "ogsd: [daemon] admin_group: gid 65534 is the overflow gid (\"nogroup\"): every group a "
     "user namespace does not map appears as it, so it would make everyone an admin\n"),
])
def test_admin_group_problems_are_one_line(directory: Path, extra: str, message: str) -> None:
    resolv = directory / "resolv.conf"
    write_resolv(resolv, "home.example", ["127.0.53.1"])
    config = write_config(directory / "ogsd.toml", [("127.0.0.1", 9)], resolv_conf=resolv,
                          extra=extra)
    done = subprocess.run(
        [sys.executable, "-m", "ogsd", "-q", "run", "--config", str(config),
         "--state-dir", str(directory / "state"), "--socket", str(directory / "ogsd.sock")],
        capture_output=True, text=True, timeout=START_WAIT, check=False,
        env={"PATH": "/usr/bin:/bin",
             "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/ogsd-test/bus"})
    assert (done.returncode, done.stderr) == (1, message)

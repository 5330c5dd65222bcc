"""The runtime layout `ogsd run` and `ogsctl` share, and the socket directory's safety."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from ogsd.config.paths import (
    LayoutError,
    client_socket,
    prepare_socket_dir,
    socket_dirs,
    user_layout,
)

UID = os.geteuid()
OTHER = UID + 4242  # a uid that owns nothing here


def private_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True)
    path.chmod(mode)
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_without_xdg_runtime_dir_both_sides_agree_on_a_private_dir(home: Path,
                                                                   tmp_path: Path) -> None:
    """Issue 8: the daemon fell back to /tmp/ogsd-<uid>, ogsctl to /run/user/<uid>."""
    env = {"HOME": str(home)}
    run_user = tmp_path / "run-user"  # no logind directory for us
    expected = home / ".local" / "state" / "ogsd" / "run" / "ogsd.sock"
    assert user_layout(env, run_user=run_user).socket == expected
    assert client_socket({**env, "OGSD_USER_MODE": "1"}, run_user=run_user) == expected


@pytest.mark.parametrize(("variables", "logind_mode", "expected"), [
    ({"XDG_RUNTIME_DIR": "/run/user/77"}, None, ["/run/user/77/ogsd", "STATE"]),
    ({"XDG_RUNTIME_DIR": "relative/dir"}, None, ["STATE"]),  # invalid per XDG: ignored
    ({"XDG_RUNTIME_DIR": ""}, 0o700, ["LOGIND", "STATE"]),
    ({}, 0o755, ["STATE"]),  # not private: not logind's own
    ({"XDG_STATE_HOME": "/srv/state"}, None, ["/srv/state/ogsd/run"]),
])
def test_socket_directory_candidates(home: Path, tmp_path: Path, variables: dict[str, str],
                                     logind_mode: int | None, expected: list[str]) -> None:
    run_user = tmp_path / "run-user"
    if logind_mode is not None:
        private_dir(run_user / str(UID), logind_mode)
    names = {"STATE": str(home / ".local/state/ogsd/run"),
             "LOGIND": str(run_user / str(UID) / "ogsd")}
    dirs = socket_dirs({"HOME": str(home), **variables}, run_user=run_user)
    assert [str(d) for d in dirs] == [names.get(e, e) for e in expected]


def test_logind_directory_of_another_user_is_not_used(tmp_path: Path, home: Path) -> None:
    run_user = tmp_path / "run-user"
    private_dir(run_user / str(OTHER))  # owned by us, named for OTHER
    dirs = socket_dirs({"HOME": str(home)}, uid=OTHER, run_user=run_user)
    assert dirs == [home / ".local/state/ogsd/run"]


def test_client_finds_the_daemon_where_it_listens(tmp_path: Path, home: Path) -> None:
    """A daemon started before logind made /run/user/<uid> listens in the fallback: the
    client, which now sees the logind directory too, still finds it."""
    run_user = tmp_path / "run-user"
    env = {"HOME": str(home), "OGSD_USER_MODE": "1"}
    fallback = user_layout(env, run_user=run_user).socket
    prepare_socket_dir(fallback.parent)
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(fallback))
        private_dir(run_user / str(UID))
        assert client_socket(env, run_user=run_user) == fallback
    fallback.unlink()
    assert client_socket(env, run_user=run_user) == run_user / str(UID) / "ogsd" / "ogsd.sock"


@pytest.mark.root
def test_a_system_socket_closed_to_the_user_is_still_the_one(tmp_path: Path) -> None:
    """Issue 15, found by the package's test (tests/packaging/): to a user outside group
    ogsd, /run/ogsd (0750) cannot be searched; looking for the socket raised and ogsctl
    died with a traceback. It is the system daemon's socket: ogsctl uses it and connecting
    says "permission denied ... ogsd's socket group?" (exit 4)."""
    closed = private_dir(tmp_path / "run-ogsd", 0o750)
    (closed / "ogsd.sock").touch()
    pid = os.fork()
    if pid == 0:  # the child drops to nobody, who may not search `closed`
        code = 2
        try:
            os.setgid(65534)
            os.setuid(65534)
            found = client_socket({"HOME": "/nonexistent"}, system_socket=closed / "ogsd.sock")
            code = 0 if found == closed / "ogsd.sock" else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_ogsd_socket_variable_wins_for_both(tmp_path: Path) -> None:
    env = {"OGSD_SOCKET": str(tmp_path / "s.sock"), "HOME": str(tmp_path)}
    assert user_layout(env).socket == client_socket(env) == tmp_path / "s.sock"


# --- the socket directory: created private, or refused ---------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_fresh_directory_is_created_private(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "run"
    prepare_socket_dir(target)
    assert mode(target) == 0o700


def test_our_readable_directory_is_made_private(tmp_path: Path) -> None:
    target = private_dir(tmp_path / "run", 0o755)
    prepare_socket_dir(target)
    assert mode(target) == 0o700


def refusal(target: Path, uid: int = UID) -> str:
    with pytest.raises(LayoutError) as info:
        prepare_socket_dir(target, uid=uid)
    message = str(info.value)
    assert message.startswith(f"refusing to put ogsd's socket in {target}: ")
    assert "\n" not in message
    return message.split(": ", 1)[1]


def test_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    target = private_dir(tmp_path / "run", 0o777)
    assert refusal(target) == "others may write to it (mode 0777); remove it or chmod 700 it"
    assert mode(target) == 0o777  # left as found


def test_symlink_is_refused_even_to_a_good_directory(tmp_path: Path) -> None:
    good = private_dir(tmp_path / "good")
    (tmp_path / "run").symlink_to(good)
    assert refusal(tmp_path / "run").startswith("it is not a directory (a symbolic link?)")


def test_planted_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    assert refusal(tmp_path / "run") == "File exists"


def test_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    """The /tmp attack: someone else made the directory first (here: we, for OTHER)."""
    target = private_dir(tmp_path / "run")
    assert refusal(target, uid=OTHER) == (
        f"it belongs to uid {UID}, not to you (uid {OTHER}), who could replace the socket; "
        "remove it")


@pytest.mark.parametrize(("parent_mode", "refused"), [(0o777, True), (0o1777, False),
                                                      (0o775, True), (0o755, False)])
def test_parent_others_may_write_is_refused_unless_sticky(tmp_path: Path, parent_mode: int,
                                                          refused: bool) -> None:
    parent = private_dir(tmp_path / "shared", parent_mode)
    if refused:
        assert f"{parent} belongs to uid {UID} or others may write to it" in refusal(
            parent / "run")
    else:
        prepare_socket_dir(parent / "run")
        assert mode(parent / "run") == 0o700

"""Each entry point loads what it uses: `ogsd --help` and every ogsctl module stay free of
the daemon's heavy libraries (the import contracts check the static graph; this checks
what a real process has in `sys.modules`, lazy imports included)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# SQLAlchemy alone is ~0.13 s of imports; none of these is needed to print help or to
# talk to the socket.
HEAVY = ("sqlalchemy", "dns", "pyroute2", "anyio", "structlog", "uvloop", "dbus_fast",
         "defusedxml", "prometheus_client")

REPORT = ("import json, sys\n"
          "heavy = {heavy!r}\n"
          "print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set(heavy))))\n")


def _loaded_after(code: str) -> list[str]:
    """The heavy top-level packages a fresh interpreter has loaded after running `code`."""
    script = code + "\n" + REPORT.format(heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


@pytest.mark.parametrize("argv", [["--help"], ["evaluate", "--help"], ["run", "--help"],
                                  ["cache", "--help"], ["no-such-command"]])
def test_ogsd_help_and_usage_errors_load_no_heavy_library(argv: list[str]) -> None:
    code = ("import contextlib, io, sys\n"
            "from ogsd.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), "
            "contextlib.redirect_stderr(io.StringIO()):\n"
            f"    try:\n        main({argv!r})\n"
            "    except SystemExit:\n        pass\n")
    assert _loaded_after(code) == []


def test_every_client_module_loads_no_heavy_library() -> None:
    code = ("import importlib, pkgutil, ogsd.client\n"
            "for info in pkgutil.iter_modules(ogsd.client.__path__, 'ogsd.client.'):\n"
            "    importlib.import_module(info.name)\n")
    assert _loaded_after(code) == []


def test_ogsctl_status_without_a_daemon_loads_no_heavy_library(tmp_path: Path) -> None:
    code = ("import contextlib, io, sys\n"
            "from ogsd.client.ctl import run\n"
            "with contextlib.redirect_stderr(io.StringIO()):\n"
            f"    code = run(['--socket', '{tmp_path}/none.sock', 'status'])\n"
            "assert code == 3, code\n")
    assert _loaded_after(code) == []


def test_the_check_sees_a_heavy_import() -> None:
    # The probe itself must be able to fail.
    assert _loaded_after("import sqlalchemy") == ["sqlalchemy"]


def test_the_daemon_loads_the_prober_and_dns_resolver_only_when_a_round_needs_them() -> None:
    # Before READY=1 `ogsd run` needs the store, the first look and the socket; the
    # prober (sockets, TLS, name resolution) comes with the first round.
    code = ("import sys, ogsd.cli, ogsd.daemon.daemon\n"
            "late = {'ogsd.probing.round', 'ogsd.probing.addresses', 'ogsd.probing.dnsquery',\n"
            "        'ogsd.sensing.netenv', 'dns.asyncresolver', 'dns.resolver'}\n"
            "assert not late & set(sys.modules), sorted(late & set(sys.modules))\n")
    assert _loaded_after(code) == ["anyio", "dbus_fast", "defusedxml", "dns", "pyroute2",
                                   "sqlalchemy", "structlog"]

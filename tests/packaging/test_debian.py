"""debian/ agrees with the project: the pins ship what pyproject.toml asks for, the
package's version is the project's, and the paths that name Python's version agree with
the dependency that fixes it. (tests/packaging/test_deb_nspawn.py builds and runs it.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = ROOT / "debian"


def pyproject() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]  # type: ignore[no-any-return]


def pins() -> dict[str, tuple[Version, list[str]]]:
    """debian/requirements.txt: name -> (version, sha256 hashes)."""
    text = (DEBIAN / "requirements.txt").read_text().replace("\\\n", " ")
    out: dict[str, tuple[Version, list[str]]] = {}
    for line in text.splitlines():
        if not line or line.startswith(("#", "--")):
            continue
        requirement, *hashes = line.split()
        name, _, version = requirement.partition("==")
        out[canonicalize_name(name)] = (Version(version), [
            h.removeprefix("--hash=sha256:") for h in hashes])
    return out


def test_every_dependency_is_pinned_within_its_range() -> None:
    pinned = pins()
    dependencies = pyproject()["dependencies"]
    assert isinstance(dependencies, list)
    for spec in dependencies:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in debian/requirements.txt"
        assert requirement.specifier.contains(pinned[name][0]), (name, pinned[name][0])


def test_every_pin_is_exact_and_hash_checked() -> None:
    text = (DEBIAN / "requirements.txt").read_text()
    assert "--only-binary :all:" in text  # wheels from PyPI, nothing built from an sdist
    for name, (_, hashes) in pins().items():
        assert hashes, f"{name} has no --hash: pip would not run in --require-hashes mode"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name


def test_package_version_is_the_projects() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.match(r"ogsd \(([^)]+)\) ", first)
    assert match, first
    assert match.group(1) == pyproject()["version"]


def test_python_version_in_paths_matches_the_dependency() -> None:
    """The venv's site-packages is lib/python3.X: the links name it, control pins 3.X."""
    control = (DEBIAN / "control").read_text()
    low = re.search(r"python3 \(>= 3\.(\d+)~\)", control)
    high = re.search(r"python3 \(<< 3\.(\d+)\)", control)
    assert low
    assert high
    assert int(high.group(1)) == int(low.group(1)) + 1
    links = (DEBIAN / "ogsd.links").read_text()
    assert set(re.findall(r"lib/python3\.(\d+)/", links)) == {low.group(1)}

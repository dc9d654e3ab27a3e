"""Packaging (issue 21 item 8): no extra pins a package to one version; matplotlib stays a core dependency."""
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_no_extra_pins_one_version():
    extras = _project()["optional-dependencies"]
    assert extras, "pyproject.toml has no extras to check"
    for name, reqs in extras.items():
        for r in map(Requirement, reqs):
            ops = {s.operator for s in r.specifier}
            assert not ops & {"==", "===", "~="}, f"extra {name!r} pins {r} to one version"


def test_matplotlib_is_core_and_the_message_says_so():
    assert "matplotlib" in {Requirement(r).name for r in _project()["dependencies"]}
    src = (ROOT / "src" / "lengthwise" / "report.py").read_text()
    assert "core dependency" in src and "lengthwise[bench]" not in src

"""Check docstore's declared dependency minimums against .ci/minimums.txt and what is installed.

    python .ci/check_minimums.py           # installed versions satisfy pyproject.toml
    python .ci/check_minimums.py --exact   # ... and are exactly the pins of .ci/minimums.txt

Always: every direct dependency (pyproject.toml's [project] dependencies and the extras
docstore's code imports, RUNTIME_EXTRAS) has a lower bound, and .ci/minimums.txt pins each of
them, and nothing else, to exactly that bound. Then, for the interpreter running this script
(its ``pip list``): each direct dependency is installed and satisfies pyproject's specifier, so a
dependency below docstore's minimum fails the run; with ``--exact`` its version must also equal
the pin (the minimums leg: the constraints really took effect).

Exit status 0 when all holds, 1 otherwise (each problem printed on its own line).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_EXTRAS = ("embedded", "metrics")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_requirements(pyproject: Path) -> dict[str, Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        specs += project["optional-dependencies"][extra]
    return {canonical(r.name): r for r in map(Requirement, specs)}


def lower_bound(req: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in req.specifier if s.operator == ">="]
    return max(bounds) if bounds else None


def read_pins(path: Path) -> dict[str, tuple[str, Version]]:
    pins: dict[str, tuple[str, Version]] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise SystemExit(f"{path}:{number}: expected name==version, got {raw!r}")
        pins[canonical(name.strip())] = (name.strip(), Version(version.strip()))
    return pins


def installed_versions() -> dict[str, Version]:
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {canonical(d["name"]): Version(d["version"]) for d in json.loads(listing)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exact", action="store_true", help="installed == the pins")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--pins", type=Path, default=ROOT / ".ci" / "minimums.txt")
    args = parser.parse_args()

    requirements = direct_requirements(args.pyproject)
    pins = read_pins(args.pins)
    installed = installed_versions()
    problems: list[str] = []

    for key, req in requirements.items():
        floor = lower_bound(req)
        if floor is None:
            problems.append(f"{req}: pyproject.toml gives no lower bound (>=)")
        if key not in pins:
            problems.append(f"{req.name}: not pinned in {args.pins.name}")
        elif floor is not None and pins[key][1] != floor:
            problems.append(
                f"{req.name}: pyproject.toml's minimum is {floor}, "
                f"{args.pins.name} pins {pins[key][1]}"
            )
        have = installed.get(key)
        if have is None:
            problems.append(f"{req.name}: not installed")
            continue
        if not req.specifier.contains(have, prereleases=True):
            problems.append(f"{req.name} {have} is installed; docstore needs {req}")
        if args.exact and key in pins and have != pins[key][1]:
            problems.append(f"{req.name} {have} is installed, not the pinned {pins[key][1]}")
        print(f"  {req.name:<22} minimum {floor!s:<10} installed {have}")
    for key, (name, _) in pins.items():
        if key not in requirements:
            problems.append(f"{name}: pinned in {args.pins.name} but not a direct dependency")

    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

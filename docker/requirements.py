"""Print the runtime requirements of the service and its client, one per line.

The image installs these before it copies the code, so that a code change reuses the layer
that holds torch and the rest; `pyproject.toml` stays the one place they are declared.
The project's own distributions (the client is a dependency of the service) are left out:
they are installed from the source tree afterwards, without their dependencies.

    python3 docker/requirements.py pyproject.toml client/pyproject.toml
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def _name(requirement: str) -> str:
    """The distribution name of a PEP 508 requirement, normalised (PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def runtime_requirements(pyprojects: list[Path]) -> list[str]:
    projects = [tomllib.loads(path.read_text())["project"] for path in pyprojects]
    own = {_name(project["name"]) for project in projects}
    requirements: list[str] = []
    for project in projects:
        for requirement in project.get("dependencies", []):
            if _name(requirement) not in own and requirement not in requirements:
                requirements.append(requirement)
    return requirements


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    print("\n".join(runtime_requirements([Path(arg) for arg in argv])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

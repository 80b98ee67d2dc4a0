"""The client stays what it promises: typed from the served schemas, and small."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_client_models_are_generated_from_the_served_document():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import generate_client_models as generator
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    expected = generator.render(generator.served_document())
    assert generator.TARGET.read_text() == expected, (
        "client/src/lethe_client/models.py is stale: run "
        ".venv/bin/python scripts/generate_client_models.py")


def test_the_client_depends_on_httpx_and_pydantic_only():
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    assert sorted(d.split(">")[0] for d in project["dependencies"]) == ["httpx", "pydantic"]
    code = ("import sys, lethe_client, lethe_client.client; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'numpy', 'sqlalchemy', 'fastapi', 'app', 'worker', 'typer'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT / "client").stdout
    assert out.strip() == "[]"


def test_the_distributions_have_names_of_their_own_and_spdx_licenses():
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())
    # "lethe" on PyPI is an unrelated project: the command and import names stay, not the dist.
    assert server["project"]["name"] == "lethe-unlearning"
    assert client["project"]["name"] == "lethe-unlearning-client"
    assert server["project"]["scripts"] == {"lethe": "app.cli:main"}
    assert any(d.startswith("lethe-unlearning-client") for d in server["project"]["dependencies"])
    for project in (server, client):
        assert project["project"]["license"] == "Apache-2.0"  # not the deprecated table
        assert project["build-system"]["requires"] == ["setuptools>=77"]

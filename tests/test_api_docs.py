"""docs/api.md stays true: the routes it names are the routes the OpenAPI document serves (no
more, no fewer), the query parameters it names exist on their route, and the README links
only to files a clone has."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROUTE = re.compile(r"`(GET|POST|PUT|DELETE|PATCH) (/[^`\s]*)")


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def served() -> dict[tuple[str, str], set[str]]:
    from app.core.config import get_settings
    from app.main import create_app

    document = create_app(run_worker=False).openapi()
    get_settings.cache_clear()
    return {(method.upper(), _shape(path)): {p["name"] for p in op.get("parameters", [])
                                             if p["in"] == "query"}
            for path, operations in document["paths"].items()
            for method, op in operations.items()}


def documented() -> dict[tuple[str, str], set[str]]:
    routes: dict[tuple[str, str], set[str]] = {}
    for method, target in ROUTE.findall((ROOT / "docs" / "api.md").read_text()):
        path, _, query = target.partition("?")
        params = {part.split("=")[0] for part in query.split("&") if part}
        routes.setdefault((method, _shape(path)), set()).update(params)
    return routes


def test_docs_api_names_every_served_route_and_no_other():
    serving, docs = served(), documented()
    undocumented = sorted(set(serving) - set(docs))
    unserved = sorted(set(docs) - set(serving))
    assert not undocumented, f"served but not in docs/api.md: {undocumented}"
    assert not unserved, f"in docs/api.md but not served: {unserved}"
    for route, params in docs.items():
        assert params <= serving[route], (route, params - serving[route])


def test_the_readme_links_only_to_files_in_the_repository():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, "the README links to docs/api.md at least"
    for link in local:
        target = (ROOT / link).resolve()
        assert target.is_relative_to(ROOT) and target.exists(), link
    assert "../shared" not in text

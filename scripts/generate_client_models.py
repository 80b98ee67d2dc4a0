"""Write the client's typed models from the OpenAPI document the API serves.

    .venv/bin/python scripts/generate_client_models.py          # rewrite the file
    .venv/bin/python scripts/generate_client_models.py --check  # exit 1 if it is stale

Every component schema of the document becomes a pydantic model in
``client/src/lethe_client/models.py``, named as the server names it less an ``Out`` suffix
(``JobOut`` -> ``Job``); form bodies (``Body_*``) and pages (``Page_*``: the client has one
generic ``Page``) are left out. The models accept fields they do not know, so a client keeps
working against a newer server. ``tests/test_client_models.py`` fails when the file is stale.
"""

from __future__ import annotations

import keyword
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "client" / "src" / "lethe_client" / "models.py"
HEADER = '''"""Typed models of what the Lethe API serves (generated: do not edit).

Made by ``scripts/generate_client_models.py`` from the service's OpenAPI document; a test
fails when this file no longer matches it.
"""
# ruff: noqa: E501

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

'''
SKIPPED_PREFIXES = ("Body_", "Page_", "HTTPValidationError", "ValidationError")


def class_name(schema_name: str) -> str:
    return schema_name.removesuffix("Out") if schema_name != "Out" else schema_name


def annotation(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return class_name(schema["$ref"].rsplit("/", 1)[1])
    if "anyOf" in schema or "oneOf" in schema:
        options = [annotation(option) for option in schema.get("anyOf") or schema["oneOf"]]
        unique = list(dict.fromkeys(options))
        if "None" in unique:  # None last, as people write it
            unique = [o for o in unique if o != "None"] + ["None"]
        return " | ".join(unique)
    if "enum" in schema:
        return "Literal[" + ", ".join(repr(v) for v in schema["enum"]) + "]"
    if "const" in schema:
        return f"Literal[{schema['const']!r}]"
    kind = schema.get("type")
    if kind == "string":
        return "datetime" if schema.get("format") == "date-time" else "str"
    if kind == "integer":
        return "int"
    if kind == "number":
        return "float"
    if kind == "boolean":
        return "bool"
    if kind == "null":
        return "None"
    if kind == "array":
        return f"list[{annotation(schema.get('items', {}))}]"
    if kind == "object":
        extra = schema.get("additionalProperties", True)
        if schema.get("properties") or extra in (True, False):
            return "dict[str, Any]"
        return f"dict[str, {annotation(extra)}]"
    return "Any"


def field_line(name: str, schema: dict[str, Any], required: bool) -> str:
    attribute = name if name.isidentifier() and not keyword.iskeyword(name) else None
    if attribute is None or attribute.startswith("_") or attribute == "model_config":
        raise ValueError(f"field {name!r} is not a Python identifier; give it an alias")
    arguments = []
    kind = annotation(schema)
    if not required and "default" not in schema:
        # A default the server fills in with a factory: the JSON Schema does not show it.
        if kind.endswith("None"):
            arguments.append("None")
        elif kind.startswith("dict["):
            arguments.append("default_factory=dict")
        elif kind.startswith("list["):
            arguments.append("default_factory=list")
        else:
            arguments.append("None")
            kind += " | None"
    elif not required:
        default = schema.get("default")
        if isinstance(default, dict | list):
            factory = "dict" if isinstance(default, dict) else "list"
            if default:
                arguments.append(f"default_factory=lambda: {default!r}")
            else:
                arguments.append(f"default_factory={factory}")
        else:
            arguments.append(repr(default))
    if description := schema.get("description"):
        arguments.append(f"description={' '.join(description.split())!r}")
    text = f"    {attribute}: {kind}"
    if not arguments:
        return text
    if len(arguments) == 1 and not arguments[0].startswith(("default_factory", "description")):
        return f"{text} = {arguments[0]}"
    return f"{text} = Field({', '.join(arguments)})"


def render_model(name: str, schema: dict[str, Any]) -> str:
    lines = [f"class {class_name(name)}(BaseModel):"]
    if description := schema.get("description"):
        lines.append(f'    """{" ".join(description.split())}"""')
        lines.append("")
    lines.append('    model_config = ConfigDict(extra="allow", protected_namespaces=())')
    properties = schema.get("properties", {})
    if properties:
        lines.append("")
    required = set(schema.get("required", []))
    for field, field_schema in properties.items():
        lines.append(field_line(field, field_schema, field in required))
    return "\n".join(lines)


def render(document: dict[str, Any]) -> str:
    schemas = document.get("components", {}).get("schemas", {})
    names = sorted(n for n in schemas if not n.startswith(SKIPPED_PREFIXES))
    blocks = [render_model(name, schemas[name]) for name in names]
    rebuild = "\n".join(f"{class_name(name)}.model_rebuild()" for name in names)
    exports = ", ".join(repr(class_name(name)) for name in names)
    return (HEADER + "\n" + "\n\n\n".join(blocks) + "\n\n\n" + rebuild + "\n\n"
            + f"__all__ = [{exports}]\n")


def served_document() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from app.core.config import get_settings
    from app.main import create_app

    document = create_app(run_worker=False).openapi()
    get_settings.cache_clear()
    return document


def main(argv: list[str]) -> int:
    text = render(served_document())
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is stale: run {Path(__file__).name}")
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

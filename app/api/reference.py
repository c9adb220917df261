"""``/api/v1/docs``: the API reference as an HTML page, rendered on the server from the same OpenAPI document
as ``/api/v1/openapi.json``. Nothing is fetched from elsewhere and the page runs no script, so it works under
the site's Content-Security-Policy (a JavaScript viewer such as Swagger UI or ReDoc sets inline styles, which
that policy refuses)."""

from __future__ import annotations

from typing import Any

from flask import render_template

from app.api.blueprint import bp
from app.api.openapi import spec

METHODS = ("get", "post", "put", "patch", "delete")


def type_of(schema: dict[str, Any] | None) -> str:
    """A short reading of a JSON schema: ``Job``, ``integer 1-64``, ``list of string``, ``one of: a, b``."""
    if not schema:
        return "any"
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "enum" in schema:
        return "one of: " + ", ".join(str(v) for v in schema["enum"])
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " or ".join(type_of(s) for s in schema[key])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    if kind == "array":
        text = f"list of {type_of(schema.get('items'))}"
        if "maxItems" in schema:
            text += f" (at most {schema['maxItems']})"
        return text
    low = schema.get("minimum", schema.get("minLength"))
    high = schema.get("maximum", schema.get("maxLength"))
    unit = " characters" if "minLength" in schema or "maxLength" in schema else ""
    if low is not None and high is not None:
        kind += f" {low}-{high}{unit}"
    elif low is not None:
        kind += f" from {low}{unit}"
    elif high is not None:
        kind += f" up to {high}{unit}"
    if schema.get("nullable"):
        kind += " or null"
    return kind


def _body(operation: dict[str, Any]) -> list[dict[str, str]]:
    content = (operation.get("requestBody") or {}).get("content") or {}
    return [{"type": mime, "schema": type_of(body.get("schema")),
             "ref": (body.get("schema") or {}).get("$ref", "").rsplit("/", 1)[-1]} for mime, body in content.items()]


def reference(document: dict[str, Any]) -> dict[str, Any]:
    """What the page shows: each operation with its parameters, body and answers; each schema's fields."""
    operations = []
    for path, item in document["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            operations.append({
                "id": op.get("operationId") or f"{method}-{path}", "method": method.upper(),
                "path": document["servers"][0]["url"].rstrip("/") + path if document.get("servers") else path,
                "summary": op.get("summary", ""), "description": op.get("description", ""),
                "parameters": [{"name": p["name"], "in": p["in"], "required": p.get("required", False),
                                "type": type_of(p.get("schema")), "description": p.get("description", "")}
                               for p in op.get("parameters", [])],
                "body": _body(op),
                "responses": [{"code": code, "description": answer.get("description", ""),
                               "schema": ", ".join(sorted({type_of(c.get("schema")) for c in
                                                           (answer.get("content") or {}).values()}))}
                              for code, answer in sorted(op.get("responses", {}).items())],
            })
    schemas = []
    for name, schema in (document.get("components") or {}).get("schemas", {}).items():
        required = set(schema.get("required", []))
        schemas.append({"name": name, "description": schema.get("description", ""),
                        "fields": [{"name": field, "type": type_of(sub), "required": field in required,
                                    "description": sub.get("description", "")}
                                   for field, sub in (schema.get("properties") or {}).items()]})
    return {"title": document["info"].get("title", "API"), "version": document["info"].get("version", ""),
            "description": document["info"].get("description", ""), "operations": operations, "schemas": schemas}


@bp.get("/docs")
def docs():
    return render_template("api_docs.html", doc=reference(spec()))

"""Structured outputs: the JSON-schema subset we send, and a validator for it.

``jsonschema`` is not a core dependency, and the schemas Stage 1 needs are small, so this module
validates a deliberately small subset of JSON Schema:

    type (one or a list), enum, const, anyOf,
    object: properties, required, additionalProperties (false or a schema),
    array:  items, minItems, maxItems,
    string: minLength, maxLength, pattern,
    number / integer: minimum, maximum, exclusiveMinimum, exclusiveMaximum,
    annotations (ignored): title, description, default, examples, $comment, $schema.

:func:`check_schema` rejects any other keyword up front: a keyword the validator silently ignored
would look enforced while it is not. With ``strict=True`` it also enforces OpenAI's strict-mode
rules (every object lists all its properties as required and forbids additional ones) so a schema
the API would refuse with a 400 fails here, before the run starts.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from fgrft.llm.errors import ConfigError

_ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "$schema"}
_KEYWORDS = {
    "type", "enum", "const", "anyOf",
    "properties", "required", "additionalProperties",
    "items", "minItems", "maxItems",
    "minLength", "maxLength", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
} | _ANNOTATIONS
_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


class SchemaError(ConfigError):
    """The schema itself uses something this validator (or strict mode) does not support."""


def check_schema(schema: Any, *, strict: bool = False, path: str = "#") -> None:
    """Raise :class:`SchemaError` if ``schema`` leaves the supported subset."""
    if not isinstance(schema, dict):
        raise SchemaError(f"{path}: a schema must be an object, got {type(schema).__name__}")
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise SchemaError(f"{path}: unsupported schema keyword(s) {sorted(unknown)}; "
                          f"supported: {sorted(_KEYWORDS - _ANNOTATIONS)}")
    types = schema.get("type")
    for t in ([types] if isinstance(types, str) else types or []):
        if t not in _TYPES:
            raise SchemaError(f"{path}: unknown type {t!r}")
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except re.error as exc:
            raise SchemaError(f"{path}: bad pattern: {exc}") from None
    for name, sub in (schema.get("properties") or {}).items():
        check_schema(sub, strict=strict, path=f"{path}/properties/{name}")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        check_schema(extra, strict=strict, path=f"{path}/additionalProperties")
    if "items" in schema:
        check_schema(schema["items"], strict=strict, path=f"{path}/items")
    for i, sub in enumerate(schema.get("anyOf") or []):
        check_schema(sub, strict=strict, path=f"{path}/anyOf/{i}")
    missing = set(schema.get("required", [])) - set(schema.get("properties") or {})
    if missing:
        raise SchemaError(f"{path}: required names undefined properties {sorted(missing)}")
    if strict and _is_object_schema(schema):
        props = set(schema.get("properties") or {})
        if schema.get("additionalProperties") is not False:
            raise SchemaError(f"{path}: strict mode needs additionalProperties: false")
        if set(schema.get("required", [])) != props:
            raise SchemaError(f"{path}: strict mode needs every property in required "
                              f"(missing {sorted(props - set(schema.get('required', [])))})")


def _is_object_schema(schema: dict) -> bool:
    t = schema.get("type")
    return t == "object" or (isinstance(t, list) and "object" in t) or "properties" in schema


def validate(instance: Any, schema: dict, path: str = "$") -> list[str]:
    """Every violation of ``schema`` by ``instance``, as ``"<json path>: <problem>"`` lines."""
    errors: list[str] = []
    _validate(instance, schema, path, errors)
    return errors


def _type_ok(value: Any, t: str) -> bool:
    # bool is an int in Python but not a number in JSON Schema.
    if t == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"object": dict, "array": list, "string": str,
                              "boolean": bool, "null": type(None)}[t])


def _validate(value: Any, schema: dict, path: str, errors: list[str]) -> None:
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not any(_type_ok(value, t) for t in types):
            errors.append(f"{path}: expected {'/'.join(types)}, got {_json_type(value)}")
            return  # the remaining keywords would only repeat the type error
    if "enum" in schema and not any(_json_equal(value, e) for e in schema["enum"]):
        errors.append(f"{path}: {_short(value)} is not one of {schema['enum']}")
    if "const" in schema and not _json_equal(value, schema["const"]):
        errors.append(f"{path}: must equal {schema['const']!r}")
    if "anyOf" in schema and not any(not validate(value, sub, path) for sub in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    if isinstance(value, dict):
        _validate_object(value, schema, path, errors)
    elif isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: {len(value)} items, fewer than minItems {schema['minItems']}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: {len(value)} items, more than maxItems {schema['maxItems']}")
        if "items" in schema:
            for i, item in enumerate(value):
                _validate(item, schema["items"], f"{path}[{i}]", errors)
    elif isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: length {len(value)} below minLength {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: length {len(value)} above maxLength {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: does not match pattern {schema['pattern']!r}")
    elif _type_ok(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} below minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} above maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{path}: {value} not above {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{path}: {value} not below {schema['exclusiveMaximum']}")


def _validate_object(value: dict, schema: dict, path: str, errors: list[str]) -> None:
    props = schema.get("properties") or {}
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{path}: missing required property {name!r}")
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        sub_path = f"{path}.{name}"
        if name in props:
            _validate(item, props[name], sub_path, errors)
        elif extra is False:
            errors.append(f"{path}: unexpected property {name!r}")
        elif isinstance(extra, dict):
            _validate(item, extra, sub_path, errors)


def _json_equal(a: Any, b: Any) -> bool:
    # JSON equality: True is not 1, but 1 equals 1.0.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def _json_type(value: Any) -> str:
    for t in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _type_ok(value, t):
            return t
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."


def response_format(name: str, schema: dict) -> dict:
    """The strict ``response_format`` body OpenAI and vLLM accept for a JSON schema."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        # OpenAI's own rule for schema names; failing here beats a 400 mid-run.
        raise SchemaError(f"schema name {name!r} must be 1-64 letters, digits, '_' or '-'")
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


def parse_json(text: str) -> tuple[Any, str | None]:
    """``(value, None)`` for strict JSON text, ``(None, problem)`` otherwise.

    Strict means what the model must produce: a single JSON document, no raw control characters
    inside strings (``json.loads``' default ``strict=True``), nothing after it.
    """
    try:
        return json.loads(text), None
    except (json.JSONDecodeError, RecursionError) as exc:
        return None, f"not valid JSON ({exc})"

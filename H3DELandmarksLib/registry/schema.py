"""JSON schema validation that reports the first problem as one sentence naming the field path.

Types are stricter than JSON Schema's: an "integer" is written without a fraction (2, not 2.0,
which would reach ``range()`` as a float) and a "number" is finite (Python's JSON reader accepts
NaN and Infinity).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

SCHEMA_DIR = Path(__file__).resolve().parent

TYPE_PHRASES = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "true or false",
    "null": "null",
}


def _is_integer(checker, instance: object) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_finite_number(checker, instance: object) -> bool:
    return isinstance(instance, (int, float)) and not isinstance(instance, bool) and math.isfinite(instance)


StrictValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_integer, "number": _is_finite_number}),
)


@lru_cache(maxsize=None)
def validator(schema_name: str | Path) -> Draft202012Validator:
    """Validator (strict types, see above) for the schema file `schema_name` beside this module
    (or at that absolute path)."""
    schema = json.loads((SCHEMA_DIR / schema_name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return StrictValidator(schema)


def first_problem(instance: object, schema_name: str | Path, source: str) -> str | None:
    """The most relevant schema violation of `instance` as one sentence, or None when it is valid.

    Example: ``"manifest.json: preprocessing.stages[0].spacing_mm must have 3 items."``
    """
    error = best_match(validator(schema_name).iter_errors(instance))
    if error is None:
        return None
    return sentence(source, _field_and_phrase(error))


def field_path(parts: Iterable[str | int]) -> str:
    """``["stages", 0, "spacing_mm"]`` → ``"stages[0].spacing_mm"``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def sentence(source: str, field_and_phrase: tuple[str, str]) -> str:
    """``("manifest.json", ("id", "is missing"))`` → ``"manifest.json: id is missing."``."""
    field, phrase = field_and_phrase
    return f"{source}: {field} {phrase}." if field else f"{source} {phrase}."


def _field_and_phrase(error: ValidationError) -> tuple[str, str]:
    path = list(error.absolute_path)
    kind, value, schema = error.validator, error.validator_value, error.schema
    if kind == "required":
        missing = next(name for name in value if name not in error.instance)
        return field_path([*path, missing]), "is missing"
    if kind == "additionalProperties":
        unknown = sorted(set(error.instance) - set(schema.get("properties", {})))
        return field_path([*path, unknown[0]]), "is not a known field"
    if kind == "type":
        kinds = [value] if isinstance(value, str) else value
        return field_path(path), "must be " + " or ".join(TYPE_PHRASES[k] for k in kinds)
    if kind in ("minItems", "maxItems"):
        low, high = schema.get("minItems"), schema.get("maxItems")
        if low == high:
            return field_path(path), f"must have {low} item{'s' if low != 1 else ''}"
        bound = "at least" if kind == "minItems" else "at most"
        return field_path(path), f"must have {bound} {value} item{'s' if value != 1 else ''}"
    if kind == "enum":
        choices = ", ".join(json.dumps(choice) for choice in value)
        return field_path(path), f"must be one of {choices}, not {_short(error.instance)}"
    if kind == "const":
        return field_path(path), f"must be {json.dumps(value)}, not {_short(error.instance)}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = {"minimum": "at least", "maximum": "at most",
                 "exclusiveMinimum": "greater than", "exclusiveMaximum": "less than"}[kind]
        return field_path(path), f"must be {bound} {value}, not {_short(error.instance)}"
    if kind == "minLength" and value == 1:
        return field_path(path), "must not be empty"
    if kind in ("pattern", "anyOf", "oneOf") and "description" in schema:
        return field_path(path), f"must be {schema['description']}, not {_short(error.instance)}"
    return field_path(path), f"is invalid: {error.message}"


def _short(value: object, limit: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

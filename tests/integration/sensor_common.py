#!/usr/bin/python3
"""sensor_common.py — shared by the sensor_*.py tests: a small JSON Schema validator (the subset
schema/events.schema.json uses, so the tests need no python3-jsonschema), event-file readers and
the check/report helpers (common.py's)."""
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import check, finish  # noqa: E402,F401 (the sensor tests import them from here)

NETLM = os.environ.get("NETLM", "netlm")
DATA = os.environ.get("NETLM_DATA_DIR", "")
SRC = os.environ.get("NETLM_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODEL = os.path.join(SRC, "models", "ustc-tfc2016")
SCHEMA_PATH = os.path.join(SRC, "schema", "events.schema.json")


# ---- a JSON Schema (draft 2020-12 subset) validator ----

class Validator:
    """type, enum, const, required, properties, additionalProperties, items, minItems, pattern,
    minLength, maxLength, minimum, maximum, allOf, oneOf, local $ref, boolean schemas."""

    def __init__(self, schema):
        self.root = schema

    def resolve(self, ref):
        assert ref.startswith("#/"), ref
        node = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    @staticmethod
    def type_ok(value, t):
        if isinstance(t, list):
            return any(Validator.type_ok(value, x) for x in t)
        if t == "object":
            return isinstance(value, dict)
        if t == "array":
            return isinstance(value, list)
        if t == "string":
            return isinstance(value, str)
        if t == "boolean":
            return isinstance(value, bool)
        if t == "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        if t == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if t == "null":
            return value is None
        raise ValueError(t)

    def errors(self, value, schema, path="$"):
        """A list of error strings (empty = valid)."""
        if schema is True:
            return []
        if schema is False:
            return [f"{path}: not allowed"]
        errs = []
        if "$ref" in schema:
            errs += self.errors(value, self.resolve(schema["$ref"]), path)
        if "type" in schema and not self.type_ok(value, schema["type"]):
            return errs + [f"{path}: expected {schema['type']}, got {type(value).__name__}"]
        if "const" in schema and value != schema["const"]:
            errs.append(f"{path}: expected {schema['const']!r}, got {value!r}")
        if "enum" in schema and value not in schema["enum"]:
            errs.append(f"{path}: {value!r} not in {schema['enum']}")
        if isinstance(value, str):
            if "pattern" in schema and not re.search(schema["pattern"], value):
                errs.append(f"{path}: {value!r} does not match {schema['pattern']}")
            if "minLength" in schema and len(value) < schema["minLength"]:
                errs.append(f"{path}: shorter than {schema['minLength']}")
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                errs.append(f"{path}: longer than {schema['maxLength']}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                errs.append(f"{path}: {value} < {schema['minimum']}")
            if "maximum" in schema and value > schema["maximum"]:
                errs.append(f"{path}: {value} > {schema['maximum']}")
        if isinstance(value, dict):
            for key in schema.get("required", []):
                if key not in value:
                    errs.append(f"{path}: missing '{key}'")
            props = schema.get("properties", {})
            for key, sub in value.items():
                if key in props:
                    errs += self.errors(sub, props[key], f"{path}.{key}")
                elif "additionalProperties" in schema:
                    errs += self.errors(sub, schema["additionalProperties"], f"{path}.{key}")
        if isinstance(value, list):
            if "minItems" in schema and len(value) < schema["minItems"]:
                errs.append(f"{path}: fewer than {schema['minItems']} items")
            if "items" in schema:
                for i, item in enumerate(value):
                    errs += self.errors(item, schema["items"], f"{path}[{i}]")
        for sub in schema.get("allOf", []):
            errs += self.errors(value, sub, path)
        if "oneOf" in schema:
            matches = [self.errors(value, sub, path) for sub in schema["oneOf"]]
            n = sum(1 for m in matches if not m)
            if n != 1:
                best = min(matches, key=len) if matches else []
                errs.append(f"{path}: matches {n} of oneOf" + (f" (closest: {best[:3]})" if n == 0 else ""))
        return errs


_validator = None


def validator():
    global _validator
    if _validator is None:
        with open(SCHEMA_PATH) as f:
            _validator = Validator(json.load(f))
    return _validator


def read_events(text, name):
    """Parses JSON lines; checks each against the schema and that the text ends with a newline.
    Returns the events."""
    events, bad = [], []
    check(f"{name}: output ends with a complete line", text == "" or text.endswith("\n"),
          repr(text[-80:]))
    for n, line in enumerate(text.splitlines(), 1):
        try:
            ev = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"line {n}: not JSON ({e}): {line[:120]}")
            continue
        errs = validator().errors(ev, validator().root)
        if errs:
            bad.append(f"line {n}: {errs[:3]}")
        events.append(ev)
    check(f"{name}: {len(events)} lines valid against schema/events.schema.json", not bad, "; ".join(bad[:5]))
    return events


def by_type(events, t):
    return [e for e in events if e.get("event_type") == t]


def wait_for(pred, timeout=20.0, interval=0.1):
    """Polls pred until it holds (True) or timeout seconds pass (False)."""
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(interval)
    return False

"""Validates JSON instances against a JSON Schema (draft 2020-12, as MCP outputSchema uses).

stdin: {"schema": {...}, "instances": [{"name": "...", "value": ...}, ...]}
stdout: one JSON line, {"errors": ["name: message", ...]}
"""
import json
import sys

from jsonschema import Draft202012Validator

doc = json.load(sys.stdin)
validator = Draft202012Validator(doc["schema"])
Draft202012Validator.check_schema(doc["schema"])
errors = []
for inst in doc["instances"]:
    for e in validator.iter_errors(inst["value"]):
        errors.append(f"{inst['name']}: {e.json_path}: {e.message}")
print(json.dumps({"errors": errors}))

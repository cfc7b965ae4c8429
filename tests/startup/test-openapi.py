#!/usr/bin/python3
"""test-openapi.py BUILD_DIR - every service's embedded OpenAPI document is OpenAPI 3.1, and
documents exactly the routes its binary serves (each method and path, path parameters
declared), so the contract a client reads is the one the router enforces (SERVICES decision 23)."""
import glob
import json
import re
import subprocess
import sys

build = sys.argv[1] if len(sys.argv) > 1 else "build"
passed = failed = 0


def resolve(doc, obj):
    """Follows a local $ref ("#/components/parameters/x")."""
    while isinstance(obj, dict) and "$ref" in obj:
        node = doc
        for part in obj["$ref"].lstrip("#/").split("/"):
            node = node.get(part, {})
        obj = node
    return obj


def fail(msg):
    global failed
    failed += 1
    print("FAIL " + msg)


for b in sorted(glob.glob(build + "/bin/[0-9][0-9]-*")):
    name = b.rsplit("/", 1)[1]
    routes = subprocess.run([b, "--routes"], capture_output=True, text=True, check=True).stdout.split("\n")
    routes = {tuple(r.split(" ", 1)) for r in routes if r}
    try:
        doc = json.loads(subprocess.run([b, "--openapi"], capture_output=True, text=True, check=True).stdout)
    except ValueError as e:
        fail("%s: openapi.json is not JSON: %s" % (name, e))
        continue
    if not str(doc.get("openapi", "")).startswith("3.1"):
        fail("%s: openapi is %r, expected 3.1.x" % (name, doc.get("openapi")))
    documented = set()
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if method.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                continue
            documented.add((method.upper(), path))
            params = [resolve(doc, p) for p in op.get("parameters", []) + item.get("parameters", [])]
            declared = {p.get("name") for p in params if p.get("in") == "path"}
            for param in re.findall(r"{([^}]+)}", path):
                if param not in declared:
                    fail("%s: %s %s does not declare path parameter %s" % (name, method.upper(), path, param))
            if "responses" not in op:
                fail("%s: %s %s has no responses" % (name, method.upper(), path))
    for r in sorted(routes - documented):
        fail("%s: route %s %s is not in openapi.json" % (name, r[0], r[1]))
    for r in sorted(documented - routes):
        fail("%s: openapi.json documents %s %s, which the service does not serve" % (name, r[0], r[1]))
    passed += 1
print("%d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)

"""Checks the Helm chart without a helm binary (none is installable here).

- yamllint on Chart.yaml, values.yaml and ci/*.yaml;
- every values file, merged over values.yaml as Helm merges it, against values.schema.json;
- broken values files must fail the schema;
- the template actions open and close in balance;
- files/ holds exact copies of the alert rules and the dashboard in deploy/.

Prints, for each values file, its `config` (the TOML body of gateway.toml) to a file the
Rust test runs `api-gateway-mcp check` on. Usage: check_chart.py CHART DEPLOY OUTDIR
"""
import copy
import json
import pathlib
import re
import subprocess
import sys

import jsonschema
import yaml

chart, deploy, out = (pathlib.Path(a) for a in sys.argv[1:4])
failures = []


def fail(msg):
    failures.append(msg)


# 1. YAML lint (templates are Go templates, not YAML; they are checked in step 3).
lint_config = "{extends: default, rules: {line-length: {max: 160}, document-start: disable, comments: {min-spaces-from-content: 1}, truthy: {check-keys: false}}}"
yaml_files = [chart / "Chart.yaml", chart / "values.yaml", *sorted((chart / "ci").glob("*.yaml"))]
r = subprocess.run(
    [str(pathlib.Path(sys.executable).parent / "yamllint"), "-d", lint_config, *map(str, yaml_files)],
    capture_output=True,
    text=True,
)
if r.returncode != 0:
    fail("yamllint:\n" + r.stdout + r.stderr)

# 2. The values schema, on the merged values (Helm validates what the templates will see).
schema = json.loads((chart / "values.schema.json").read_text())
jsonschema.Draft7Validator.check_schema(schema)
validator = jsonschema.Draft7Validator(schema)
defaults = yaml.safe_load((chart / "values.yaml").read_text())


def merged(over):
    base = copy.deepcopy(defaults)

    def merge(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v

    merge(base, over)
    return base


def errors(values):
    return [f"{'.'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in validator.iter_errors(values)]


configs = {"values": defaults}
for f in sorted((chart / "ci").glob("*.yaml")):
    configs[f.stem] = merged(yaml.safe_load(f.read_text()))
for name, values in configs.items():
    for e in errors(values):
        fail(f"{name}: schema: {e}")
    (out / f"{name}.toml").write_text(values["config"])
    (out / f"{name}.tls").write_text("yes" if values.get("tls", {}).get("enabled") else "no")

broken = {
    "a mode that does not exist": {"mode": "daemon"},
    "replicaCount as a string": {"replicaCount": "three"},
    "an unknown key": {"replicas": 3},
    "a [server] table in config": {"config": "[server]\nthreads = 2\n"},
    "TLS without its Secret": {"tls": {"enabled": True}},
    "a port out of range": {"ports": {"mcp": 70000, "proxy": 8080, "admin": 9090}},
    "a grace period that is not a duration": {"server": {"gracePeriod": "soon"}},
}
for what, over in broken.items():
    if not errors(merged(over)):
        fail(f"the schema accepts {what}")

# 3. Template actions balance: every if/with/range/define has its end.
opener = re.compile(r"\{\{-?\s*(if|with|range|define|block)\b")
closer = re.compile(r"\{\{-?\s*end\s*-?\}\}")
for t in sorted((chart / "templates").iterdir()):
    text = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", t.read_text(), flags=re.S)
    opens, ends = len(opener.findall(text)), len(closer.findall(text))
    if opens != ends:
        fail(f"{t.name}: {opens} blocks opened, {ends} closed")
    if text.count("{{") != text.count("}}"):
        fail(f"{t.name}: unbalanced {{{{ }}}}")

# 4. The chart's copies of the rules and the dashboard are the ones in deploy/.
for copy_, original in [
    (chart / "files/alerts.yaml", deploy / "prometheus/alerts.yaml"),
    (chart / "files/dashboard.json", deploy / "grafana/api-gateway-mcp.json"),
]:
    if copy_.read_bytes() != original.read_bytes():
        fail(f"{copy_} differs from {original}: copy it again")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"OK: {len(configs)} values files, {len(broken)} broken ones refused")

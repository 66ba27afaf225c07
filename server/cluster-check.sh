#!/usr/bin/env bash
# CI check of the cluster as an operator and a user meet it: server/cluster.sh starts
# PostgreSQL, NATS and three nodes; bob listens with the `tern` CLI on one node, alice
# sends with the CLI given all three addresses; then the node alice used is killed
# (kill -9) and she sends again. Bob must see all 40 texts once, in order.
set -euo pipefail
cd "$(dirname "$0")/.."
export TERN_CLUSTER_DIR=${TERN_CLUSTER_DIR:-target/tern-cluster-check}
# --workspace, not -p: the features the test pass built with, so its artifacts are reused
# (with -p, cargo resolves other features and builds tokio, quinn, SQLite and the rest again).
cargo build -q --workspace --bins
bash server/cluster.sh clean >/dev/null 2>&1 || true
trap 'bash server/cluster.sh clean >/dev/null 2>&1 || true' EXIT
bash server/cluster.sh start
dir=$TERN_CLUSTER_DIR
servers=$(bash server/cluster.sh servers)
tern() { target/debug/tern --ca "$dir/data/dev-cert.pem" --transport quic "$@"; }
token() { target/debug/tern-server token --dev --user "$1"; }

# Bob on node 2 only: the node that dies is alice's.
bob_server=${servers##*,}
tern --server "$bob_server" --user bob --token "$(token bob)" --data "$dir/cli-bob" \
  listen --count 40 --timeout 120 > "$dir/bob.txt" &
listener=$!
sleep 2
alice() {
  tern --server "$servers" --user alice --token "$(token alice)" --data "$dir/cli-alice" \
    send --to bob --text "$1" --count 20
}
alice before
# alice's client preferred node 0 (the first address): kill it.
bash server/cluster.sh kill 0
bash server/cluster.sh status
alice after
wait "$listener"
got=$(grep -oE '(before|after) [0-9]+' "$dir/bob.txt" || true)
want=$( (for i in $(seq 20); do echo "before $i"; done; for i in $(seq 20); do echo "after $i"; done) )
if [ "$got" != "$want" ]; then
  echo "bob's texts differ from alice's:" >&2
  diff <(echo "$want") <(echo "$got") >&2 || true
  exit 1
fi
echo "cluster check passed: 40/40 in order through three nodes, one killed on the way"

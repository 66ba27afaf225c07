#!/usr/bin/env bash
# Long versions of the chaos tests (CI runs short ones): the full stack through
# tern-netsim. Prints each scenario's numbers and the relay's counters.
#
#   netsim/chaos.sh            # 2,000 messages, 10 s blackout, 3 minutes idle behind a NAT
set -euo pipefail
cd "$(dirname "$0")/.."
export TERN_CHAOS_MESSAGES=${TERN_CHAOS_MESSAGES:-2000}
export TERN_CHAOS_BLACKOUT_SECS=${TERN_CHAOS_BLACKOUT_SECS:-10}
export TERN_CHAOS_IDLE_SECS=${TERN_CHAOS_IDLE_SECS:-180}
cargo test --release -p tern-netsim --test chaos -- --nocapture --test-threads 1

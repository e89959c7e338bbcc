#!/bin/sh
# The runs behind docs/benchmarks.md, one after another (never in parallel: the
# machine has 2 cores and every run wants both). About 22 minutes.
# Usage: bench/run_all.sh [extra options for every run, e.g. --server-src head]
set -u
cd "$(dirname "$0")/.."
run() { echo "== python -m bench $*"; python -m bench "$@"; echo; }

for mode in embedded redis; do
  run fill --mode "$mode" --clients 2000,5000,10000,20000 --deadline 400 "$@"
  run churn --mode "$mode" --rooms 250 --rate 200,500,1000,2000 --duration 10 "$@"
  run cold --mode "$mode" --rooms 250 --rate 200,500,1000,1500 --duration 10 "$@"
  run list --mode "$mode" --rooms 1000,10000 --rate 500 --duration 10 "$@"
  run storm --mode "$mode" --rooms 500 --spread 1 "$@"
  run storm --mode "$mode" --rooms 500 --spread 0 "$@"
done
# N node processes on one port against one (the --workers target)
run cold --mode redis --rooms 250 --rate 300,600,900,1200 --duration 8 --workers 1 "$@"
run cold --mode redis --rooms 250 --rate 300,600,900,1200 --duration 8 --workers 2 "$@"
run cross-node --rooms 250 --rate 200,500,1000,2000 --duration 10 "$@"
# Profiles of the churn peak, in both modes.
run churn --mode embedded --rooms 250 --rate 2000 --duration 10 --profile "$@"
run churn --mode redis --rooms 250 --rate 1000 --duration 10 --profile "$@"
# The proposed fixes, tried on the nodes through bench/patches (lobby/ untouched).
run storm --mode redis --rooms 500 --spread 0 --server-patch pool "$@"
run churn --mode redis --rooms 250 --rate 1000,2000 --duration 10 --server-patch pool "$@"
# N node processes on one port against one (the --workers target)
run cold --mode redis --rooms 250 --rate 300,600,900,1200 --duration 8 --workers 1 "$@"
run cold --mode redis --rooms 250 --rate 300,600,900,1200 --duration 8 --workers 2 "$@"
run cross-node --rooms 250 --rate 1000,2000 --duration 10 --server-patch pool "$@"
run churn --mode redis --rooms 250 --rate 1000,2000 --duration 10 --server-patch pool,gcfreeze "$@"
# A reconnect storm: 1,000 handshakes in flight, with asyncio's listen backlog
# of 100 and with 4,096.
run fill --mode embedded --clients 10000 --connect-concurrency 500 "$@"
run fill --mode embedded --clients 10000 --connect-concurrency 500 --server-patch backlog "$@"

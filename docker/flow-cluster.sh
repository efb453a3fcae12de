#!/bin/sh
# One process of a multi-process Bytewax cluster in a Kubernetes StatefulSet, then exec "$@"
# (normally `maskwatch flow run ...`).
#
# Bytewax addresses a cluster as -i <process id> -a "host:port;host:port;..." (same list, same order,
# on every process). In a StatefulSet pod N of set S is "S-N" and is reachable as
# S-N.<headless service>, so both are derived here, as bytewax.run does for BYTEWAX_POD_NAME and
# BYTEWAX_STATEFULSET_NAME, and exported as BYTEWAX_PROCESS_ID / BYTEWAX_ADDRESSES, which
# `maskwatch flow run` reads.
#
# Recovery: Bytewax needs a complete set of partitions across the cluster, one set per replica count;
# each process keeps its own in its directory (a PersistentVolume per pod). A pod whose directory is
# empty creates the set and keeps only its own partition, part-<ordinal>.
#
# Env: BYTEWAX_POD_NAME (downward API metadata.name), BYTEWAX_STATEFULSET_NAME, BYTEWAX_REPLICAS,
#      BYTEWAX_SERVICE_NAME (headless service), BYTEWAX_PORT (default 2101), BYTEWAX_DOMAIN (optional,
#      e.g. "maskwatch.svc.cluster.local"), BYTEWAX_RECOVERY_DIRECTORY (optional).
set -eu

fail() { echo "flow-cluster: $*" >&2; exit 2; }

[ -n "${BYTEWAX_POD_NAME:-}" ] || fail "BYTEWAX_POD_NAME is not set (downward API metadata.name)"
[ -n "${BYTEWAX_STATEFULSET_NAME:-}" ] || fail "BYTEWAX_STATEFULSET_NAME is not set"
[ -n "${BYTEWAX_SERVICE_NAME:-}" ] || fail "BYTEWAX_SERVICE_NAME (the headless service) is not set"
replicas="${BYTEWAX_REPLICAS:-}"
case "$replicas" in ''|*[!0-9]*) fail "BYTEWAX_REPLICAS='$replicas' is not a number of pods" ;; esac
port="${BYTEWAX_PORT:-2101}"

ordinal="${BYTEWAX_POD_NAME#"$BYTEWAX_STATEFULSET_NAME"-}"
case "$ordinal" in
  ''|*[!0-9]*) fail "pod name '$BYTEWAX_POD_NAME' is not '$BYTEWAX_STATEFULSET_NAME-<ordinal>'" ;;
esac
[ "$ordinal" -lt "$replicas" ] || fail "pod ordinal $ordinal >= BYTEWAX_REPLICAS=$replicas: update BYTEWAX_REPLICAS with replicas"

addresses=""
i=0
while [ "$i" -lt "$replicas" ]; do
  host="$BYTEWAX_STATEFULSET_NAME-$i.$BYTEWAX_SERVICE_NAME${BYTEWAX_DOMAIN:+.$BYTEWAX_DOMAIN}"
  addresses="${addresses:+$addresses;}$host:$port"
  i=$((i + 1))
done
BYTEWAX_PROCESS_ID="$ordinal"
BYTEWAX_ADDRESSES="$addresses"
export BYTEWAX_PROCESS_ID BYTEWAX_ADDRESSES

dir="${BYTEWAX_RECOVERY_DIRECTORY:-}"
if [ -n "$dir" ]; then
  mkdir -p "$dir"
  if [ -z "$(ls -A "$dir")" ]; then
    tmp="$(mktemp -d)"
    python -m bytewax.recovery "$tmp" "$replicas"
    mv "$tmp/part-$ordinal.sqlite3" "$dir/"
    rm -rf "$tmp"
    echo "flow-cluster: created recovery partition $ordinal of $replicas in $dir" >&2
  fi
fi

echo "flow-cluster: process $ordinal of $replicas, addresses $addresses" >&2
exec "$@"

#!/usr/bin/env bash
# cluster/README.md's steps, run against a two-node Ray cluster on this machine.
#
# The two "hosts" are network namespaces made here (a veth pair, 10.203.0.1 and .2): the
# head and an S3-compatible server (moto) in one, a worker node in the other, token auth
# on both; the client commands run on the head's network. Nothing listens outside the
# namespaces, and everything started is stopped by pid (the namespaces' own processes).
# Needs root and iproute2. Usage: sudo cluster/try-local.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(pwd)/.venv/bin
WORK=${1:-$(mktemp -d /tmp/rayrec-try-XXXX)}
HEAD=rrtry-h WORKER=rrtry-w HIP=10.203.0.1 WIP=10.203.0.2
mkdir -p "$WORK/home" "$WORK/wd"
say() { printf '\n== %s\n' "$*"; }

cleanup() {
  for ns in $HEAD $WORKER; do
    pids=$(ip netns pids $ns 2>/dev/null || true)
    [ -n "$pids" ] && kill $pids 2>/dev/null || true
  done
  sleep 3
  for ns in $HEAD $WORKER; do
    pids=$(ip netns pids $ns 2>/dev/null || true)
    [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    ip netns del $ns 2>/dev/null || true
  done
}
trap cleanup EXIT

# the environment every node and client has: the venv first, S3 and token settings
export PATH=$BIN:$PATH HOME=$WORK/home RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
export AWS_ACCESS_KEY_ID=try AWS_SECRET_ACCESS_KEY=try-secret AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://$HIP:9000 AWS_EC2_METADATA_DISABLED=true
unset RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER RAY_ADDRESS
on_head() { ip netns exec $HEAD "$@"; }

say "1. start a cluster: two hosts, ray start --head on one, ray start --address on the other"
ip netns add $HEAD; ip netns add $WORKER
ip link add ${HEAD}v type veth peer name ${WORKER}v
for pair in "$HEAD $HIP" "$WORKER $WIP"; do
  set -- $pair
  ip link set ${1}v netns $1
  ip -n $1 addr add $2/24 dev ${1}v; ip -n $1 link set ${1}v up; ip -n $1 link set lo up
done
ray get-auth-token --generate > /dev/null      # the cluster token, in $HOME/.ray/auth_token
on_head moto_server -H $HIP -p 9000 > "$WORK/s3.log" 2>&1 &
GLOO_SOCKET_IFNAME=${HEAD}v on_head ray start --head --node-ip-address $HIP --port 6379 --dashboard-host $HIP \
  --num-cpus 1 --object-store-memory 200000000 --temp-dir /tmp/rrtry-h --disable-usage-stats > /dev/null
GLOO_SOCKET_IFNAME=${WORKER}v ip netns exec $WORKER ray start --address $HIP:6379 --node-ip-address $WIP \
  --num-cpus 1 --object-store-memory 200000000 --temp-dir /tmp/rrtry-w --disable-usage-stats > /dev/null
export RAY_ADDRESS=http://$HIP:8265
on_head ray status --address $HIP:6379 | grep -E "node_|CPU" || true
on_head rayrec jobs list

say "2. put the data on shared storage (s3://rayrec-try on the S3 server beside the head)"
rayrec synth --out "$WORK/raw" --events 30000 --days 4 --items 300 --seed 1
on_head python -c "
import pyarrow.fs as fs; from rayrec.storage import locate
fs.S3FileSystem(endpoint_override='$AWS_ENDPOINT_URL', allow_bucket_creation=True).create_dir('rayrec-try')
locate('s3://rayrec-try/raw').upload('$WORK/raw')"

say "3. submit the ETL"
on_head rayrec submit -- rayrec etl --input s3://rayrec-try/raw/events.parquet --out s3://rayrec-try/data

say "4. train on 2 workers, one per node"
TRAIN="--data s3://rayrec-try/data --workers 2 --placement spread --train-days 1:3 --epochs 40 --batch-size 64
       --arch gpt2 --d-model 32 --n-head 2 --n-layer 1 --seed 5"
on_head rayrec submit --working-dir "$WORK/wd" -- rayrec train $TRAIN --out s3://rayrec-try/run

say "5. submit a pipeline (the ETL stage is complete: skipped)"
cat > "$WORK/pipeline.yaml" <<YAML
name: try-local
stages:
  - etl: {input: [s3://rayrec-try/raw/events.parquet], out: s3://rayrec-try/data}
  - evaluate: {run: s3://rayrec-try/run, data: s3://rayrec-try/data, days: '4'}
YAML
on_head rayrec submit "$WORK/pipeline.yaml"

say "6. watch it: the dashboard at $RAY_ADDRESS (Jobs, Cluster, Train tabs); from the terminal:"
on_head rayrec jobs list

say "7. stop a training job, then resume it"
out=$(on_head rayrec submit --no-wait -- rayrec train $TRAIN --out s3://rayrec-try/stopped)
echo "$out" | head -1
job=$(echo "$out" | sed -n 's/^submitted job \([^ ]*\) .*/\1/p')
until on_head rayrec jobs logs "$job" | grep -q "\[rayrec\] day 1:"; do sleep 1; done
on_head rayrec jobs stop "$job"
on_head rayrec jobs logs "$job" | tail -2
on_head rayrec submit -- rayrec train --resume s3://rayrec-try/stopped --out s3://rayrec-try/resumed
on_head python -c "
from rayrec.storage import locate
a = locate('s3://rayrec-try/run/metrics.json').read_json()['average']
b = locate('s3://rayrec-try/resumed/metrics.json').read_json()['average']
print('uninterrupted ndcg@20 %.6f, stopped and resumed ndcg@20 %.6f' % (a['ndcg@20'], b['ndcg@20']))
assert abs(a['ndcg@20'] - b['ndcg@20']) < 1e-6"
say "done: every step worked; stopping the cluster"

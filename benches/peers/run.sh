#!/usr/bin/env bash
# fracture-cnn's `bench` and the peers (PyTorch NCHW and channels_last, Keras/TF without and with
# XLA) on fracturenet and mobilenet at 128 and 256 pixels and on the shipped model's networks
# (resnet, resnet-loc) at 192, one after the other in one window, then the table (markdown) with
# our ratio to the fastest peer.
#
#   benches/peers/run.sh                 # everything: about 40 minutes on 2 cores
#   MODELS=resnet RESNET_SIZES=192 REPEATS=5 benches/peers/run.sh
#   ROUNDS=3 MODELS=resnet benches/peers/run.sh    # noisy machine: best of 3 rounds each
#
# ROUNDS (default 1) repeats the whole sequence; rounds alternate the order (ours first, then
# ours last), so a slow spell of the host does not fall on one framework only, and the table
# keeps each framework's best round. On a shared or throttling machine use ROUNDS=3 or more.
# The first run makes a Python environment with the pinned frameworks in $PEERS_VENV (default
# ~/.cache/fracture-cnn/peers-venv; about 3 GB to download). Results go to $PEERS_OUT (default
# $TMPDIR/fracture-cnn-peers): results.jsonl, one line per measurement, and table.md.
# Timings mean something only on an otherwise idle machine: the script says when it is not.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${PEERS_VENV:-$HOME/.cache/fracture-cnn/peers-venv}
OUT=${PEERS_OUT:-${TMPDIR:-/tmp}/fracture-cnn-peers}
MODELS=${MODELS:-fracturenet mobilenet resnet resnet-loc}
SIZES=${SIZES:-128 256}
RESNET_SIZES=${RESNET_SIZES:-192}
CONFIGS=${CONFIGS:-torch torch-cl keras keras-xla}
REPEATS=${REPEATS:-10}
ROUNDS=${ROUNDS:-1}
THREADS=${THREADS:-2}

if [ ! -x "$VENV/bin/python" ]; then
    echo "making the peers' Python environment in $VENV (about 3 GB to download)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch==2.15.0 tensorflow-cpu==2.21.0 keras==3.15.1 numpy==2.4.6
fi
cargo build --release --quiet
mkdir -p "$OUT"
results="$OUT/results.jsonl"
: > "$results"

# The share of the processors busy over three seconds, before anything of ours runs.
cpu_times() { read -r _ user nice sys idle iowait irq softirq steal _ < /proc/stat
              echo $((user + nice + sys + irq + softirq + steal)) $((idle + iowait)); }
read -r busy0 idle0 < <(cpu_times); sleep 3; read -r busy1 idle1 < <(cpu_times)
busy=$((100 * (busy1 - busy0) / (busy1 - busy0 + idle1 - idle0 + 1)))
if [ "$busy" -gt 10 ]; then
    echo "warning: the processors were $busy % busy before the run: something else is running," \
        "and the timings will show it" >&2
fi
# One measurement: ours (`bench`) or one peer configuration, appended to results.jsonl.
measure() { # measure MODEL SIZE CONFIG ROUND
    echo "round $4: $1 at $2: $3" >&2
    if [ "$3" = fracture-cnn ]; then
        ./target/release/fracture-cnn bench --backend cpu --model "$1" --image-size "$2" \
            --repeats "$REPEATS" --threads "$THREADS" --json --quiet \
            | python3 benches/peers/table.py --from-bench --round "$4" >> "$results"
    else
        "$VENV/bin/python" benches/peers/peers.py --framework "$3" --model "$1" \
            --image-size "$2" --repeats "$REPEATS" --threads "$THREADS" \
            | python3 benches/peers/table.py --tag-round "$4" >> "$results"
    fi
}
for round in $(seq 1 "$ROUNDS"); do
    order="fracture-cnn $CONFIGS"
    if [ $((round % 2)) -eq 0 ]; then order="$CONFIGS fracture-cnn"; fi
    for model in $MODELS; do
        sizes=$SIZES
        case $model in resnet*) sizes=$RESNET_SIZES ;; esac
        for size in $sizes; do
            for config in $order; do measure "$model" "$size" "$config" "$round"; done
        done
    done
done
python3 benches/peers/table.py "$results" | tee "$OUT/table.md"
echo "results: $results" >&2

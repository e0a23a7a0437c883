#!/usr/bin/env bash
# fracture-cnn's `bench` and the peers (PyTorch NCHW and channels_last, Keras/TF without and with
# XLA) on fracturenet and mobilenet at 128 and 256 pixels and on the shipped model's networks
# (resnet, resnet-loc) at 192, one after the other in one window, then the table (markdown) with
# our ratio to the fastest peer.
#
#   benches/peers/run.sh                 # everything: about 40 minutes on 2 cores
#   MODELS=resnet RESNET_SIZES=192 REPEATS=5 benches/peers/run.sh
#
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
for model in $MODELS; do
    sizes=$SIZES
    case $model in resnet*) sizes=$RESNET_SIZES ;; esac
    for size in $sizes; do
        echo "$model at $size: fracture-cnn" >&2
        ./target/release/fracture-cnn bench --backend cpu --model "$model" --image-size "$size" \
            --repeats "$REPEATS" --threads "$THREADS" --json --quiet \
            | python3 benches/peers/table.py --from-bench >> "$results"
        for config in $CONFIGS; do
            echo "$model at $size: $config" >&2
            "$VENV/bin/python" benches/peers/peers.py --framework "$config" --model "$model" \
                --image-size "$size" --repeats "$REPEATS" --threads "$THREADS" >> "$results"
        done
    done
done
python3 benches/peers/table.py "$results" | tee "$OUT/table.md"
echo "results: $results" >&2

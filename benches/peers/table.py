#!/usr/bin/env python3
"""The peers table of benches/peers/run.sh (markdown), from its results.jsonl.

  table.py RESULTS.jsonl     every framework's best round, then fracture-cnn against the
                             fastest peer
  table.py --from-bench [--round N]
                             reads `fracture-cnn bench --json` on stdin and prints it as one
                             results line (the format peers.py prints)
  table.py --tag-round N     copies results lines from stdin to stdout, marked as round N
Standard library only.
"""
import json
import sys

CONFIG_NAMES = {
    "fracture-cnn": "fracture-cnn (`bench`, CPU)",
    "torch": "PyTorch, NCHW",
    "torch-cl": "PyTorch, channels_last",
    "keras": "Keras/TF (oneDNN), no XLA",
    "keras-xla": "Keras/TF, XLA",
}


def from_bench(report):
    cpu = report["backends"]["cpu"]
    return {
        "framework": "fracture-cnn",
        "versions": cpu["device"],
        "model": report["model"],
        "image_size": report["image_size"],
        "threads": report["threads"],
        "train_batch": report["batch_size"],
        "train_images_per_s": cpu["train_images_per_s"],
        "infer_batch": report["infer_batch_size"],
        "infer_images_per_s": cpu["infer_images_per_s"],
        "peak_rss_mib": cpu["peak_rss_mib"],
        "gemm_gflops": cpu.get("gemm_gflops"),
        "peak_gflops": cpu.get("peak_gflops"),
        "cpu": report["cpu"],
    }


METRICS = ("train_images_per_s", "infer_images_per_s")


def best_rounds(rows):
    """One row per (model, size, framework): each metric its best over the rounds, since a
    noisy host only ever slows a run down. Also the number of rounds seen."""
    merged = {}
    for r in rows:
        key = (r["model"], r["image_size"], r["framework"])
        if key not in merged:
            merged[key] = dict(r, rounds=1)
            continue
        m = merged[key]
        m["rounds"] += 1
        for metric in METRICS:
            m[metric] = max(m[metric], r[metric])
    return list(merged.values())


def table(rows):
    rows = best_rounds(rows)
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["image_size"]), []).append(r)
    ours_first = sorted(CONFIG_NAMES, key=list(CONFIG_NAMES).index)
    out = ["| model | size | framework | train img/s, batch 32 | infer img/s, batch 64 |",
           "|---|---:|---|---:|---:|"]
    for (model, size), rs in groups.items():
        for r in sorted(rs, key=lambda r: ours_first.index(r["framework"])):
            out.append(f"| {model} | {size} | {CONFIG_NAMES[r['framework']]} | "
                       f"{r['train_images_per_s']:.1f} | {r['infer_images_per_s']:.1f} |")
    out += ["", "| model | size | train: ours ÷ fastest peer | infer: ours ÷ fastest peer |",
            "|---|---:|---:|---:|"]
    for (model, size), rs in groups.items():
        ours = [r for r in rs if r["framework"] == "fracture-cnn"]
        peers = [r for r in rs if r["framework"] != "fracture-cnn"]
        if not ours or not peers:
            continue
        cells = []
        for key in METRICS:
            best = max(peers, key=lambda r: r[key])
            cells.append(f"{ours[0][key] / best[key]:.2f}× ({CONFIG_NAMES[best['framework']]}, "
                         f"{best[key]:.1f})")
        out.append(f"| {model} | {size} | {cells[0]} | {cells[1]} |")
    ours = [r for r in rows if r["framework"] == "fracture-cnn"]
    if ours:
        o = ours[0]
        rounds = max(r["rounds"] for r in rows)
        if rounds > 1:
            out += ["", f"Each figure is the best of {rounds} rounds (order alternating)."]
        out += ["", f"Machine: {o['cpu']}, {o['threads']} threads; fracture-cnn: {o['versions']}."]
        if o.get("gemm_gflops") and o.get("peak_gflops"):
            out.append(f"fracture-cnn's GEMM (1024³): {o['gemm_gflops']:.1f} GFLOP/s, "
                       f"{100 * o['gemm_gflops'] / o['peak_gflops']:.0f} % of the measured FMA peak "
                       f"({o['peak_gflops']:.1f}).")
    versions = sorted({r["versions"] for r in rows if r["framework"] != "fracture-cnn"})
    if versions:
        out.append("Peers: " + "; ".join(versions) + ".")
    return "\n".join(out)


def main():
    args = sys.argv[1:]
    if args[:1] == ["--from-bench"] and len(args) in (1, 3) and args[1:2] in ([], ["--round"]):
        row = from_bench(json.load(sys.stdin))
        if len(args) == 3:
            row["round"] = int(args[2])
        print(json.dumps(row))
        return
    if len(args) == 2 and args[0] == "--tag-round":
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(dict(json.loads(line), round=int(args[1]))))
        return
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    print(table(rows))


if __name__ == "__main__":
    main()

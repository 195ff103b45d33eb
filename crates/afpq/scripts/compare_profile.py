#!/usr/bin/env python3
"""Per-node times of afpq's FP32 engine beside ONNX Runtime's on the same model, batch and
threads: where the engine loses, layer by layer.

    compare_profile.py --afpq target/release/afpq --model M.onnx [--batch 1] [--threads 2]

ONNX Runtime's own profiler (`enable_profiling`) times each node over RUNS runs after WARMUP;
afpq's per-node times come from `afpq bench --profile --json` (fastest of 7 runs). Both report
the fastest run per node. ONNX Runtime fuses and renames nodes (its NCHWc convolutions are
named after their outputs), so convolutions are paired by their order in the two graphs, which
both keep; other nodes are listed per side. The two engines are timed one after the other,
not interleaved: on a machine whose speed drifts, compare ratios within a table, not across
runs. Prints a table, then one JSON object on the last line.
"""
import argparse, collections, json, os, subprocess, sys, tempfile
import numpy as np
import onnxruntime as ort

WARMUP, RUNS = 5, 20


def ort_nodes(model, batch, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    shape = [d if isinstance(d, int) else batch for d in i.shape]
    shape[0] = batch
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(WARMUP + RUNS):
        s.run(None, {i.name: x})
    path = s.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    times = collections.OrderedDict()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = (e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?"))
            times.setdefault(key, []).append(e["dur"] / 1000.0)
    return [(n, op, min(v[-RUNS:])) for (n, op), v in times.items()]


def afpq_nodes(afpq, model, batch, threads):
    out = subprocess.run(
        [afpq, "bench", model, "--batch", str(batch), "--threads", str(threads),
         "--seconds", "1", "--profile", "--json", "--quiet"],
        check=True, capture_output=True, text=True,
    ).stdout
    nodes = json.loads(out)["results"][0]["profile"]["nodes"]
    return [(n["name"], n["op"], n["fastest_ms"], n["macs"]) for n in nodes]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--afpq", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    ours = afpq_nodes(a.afpq, a.model, a.batch, a.threads)
    peer = ort_nodes(a.model, a.batch, a.threads)
    our_convs = [n for n in ours if n[1].startswith("Conv")]
    peer_convs = [n for n in peer if n[1] in ("Conv", "FusedConv")]
    rows = []
    print(f"{'afpq node':40s} {'MMAC':>7s} {'afpq ms':>8s} {'ORT ms':>8s} {'ratio':>6s}")
    for (name, op, ms, macs), (_, _, pms) in zip(our_convs, peer_convs):
        rows.append({"node": name, "op": op, "macs": macs, "afpq_ms": ms, "ort_ms": pms})
        print(f"{name[-40:]:40s} {macs / 1e6:7.1f} {ms:8.3f} {pms:8.3f} {ms / max(pms, 1e-9):6.2f}")
    if len(our_convs) != len(peer_convs):
        print(f"note: {len(our_convs)} convolutions here, {len(peer_convs)} in ONNX Runtime's graph;"
              " pairs past the shorter list are not shown", file=sys.stderr)
    others = {
        "afpq": [(n, op, round(ms, 3)) for n, op, ms, _ in ours if not op.startswith("Conv")],
        "ort": [(n, op, round(ms, 3)) for n, op, ms in peer if op not in ("Conv", "FusedConv")],
    }
    print("other nodes, afpq:", others["afpq"])
    print("other nodes, ONNX Runtime:", others["ort"])
    total = {"afpq_ms": sum(n[2] for n in ours), "ort_ms": sum(n[2] for n in peer)}
    print(f"sum of fastest runs: afpq {total['afpq_ms']:.2f} ms, ONNX Runtime {total['ort_ms']:.2f} ms")
    print(json.dumps({"model": a.model, "batch": a.batch, "threads": a.threads, "peer": f"onnxruntime {ort.__version__}",
                      "convolutions": rows, "others": others, "total": total}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks with ONNX Runtime that models re-written by afp-onnx compute exactly what the original does.

Usage (from the crate folder, with the peer venv of /work/shared/tools/setup_peer.sh):
    ~/.cache/afpq-peer-venv/bin/python scripts/check_ort_roundtrip.py [model_name] [K]
Defaults: resnet8_cifar10 and its 16-image reference input. Needs cargo; data from
$AFPQ_SHARED_DATA (default /work/shared/data). Exits non-zero on any difference.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

crate = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data = os.environ.get("AFPQ_SHARED_DATA", "/work/shared/data")
name = sys.argv[1] if len(sys.argv) > 1 else "resnet8_cifar10"
k = sys.argv[2] if len(sys.argv) > 2 else "16"
model = os.path.join(data, "models", f"{name}.onnx")
x = np.load(os.path.join(data, "reference", f"{name}_input{k}.npy"))
ref = np.load(os.path.join(data, "reference", f"{name}_output{k}.npy"))

env = dict(os.environ)
env.setdefault("CARGO_TARGET_DIR", os.path.join(crate, "target"))


def run(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0].name
    return sess.run(None, {inp: x})[0]


with tempfile.TemporaryDirectory(prefix="afp-onnx-ort-") as out:
    subprocess.run(
        ["cargo", "run", "--quiet", "--release", "--example", "rewrite", "--", model, out],
        cwd=crate, env=env, check=True,
    )
    print(f"onnxruntime {ort.__version__}, model {name}, input {x.shape}")
    y0 = run(model)
    scale = float(np.abs(ref).max())
    print(f"original: max |out - reference| / max|reference| = {float(np.abs(y0 - ref).max()) / scale:.3g}")
    ok = True
    for variant in ["rewritten.onnx", "external.onnx", "external_reloaded.onnx"]:
        y = run(os.path.join(out, variant))
        same = y.shape == y0.shape and np.array_equal(y, y0)
        ok &= same
        diff = float(np.abs(y - y0).max()) if y.shape == y0.shape else float("nan")
        print(f"{variant}: outputs exactly equal to original: {same} (max abs diff {diff})")
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)

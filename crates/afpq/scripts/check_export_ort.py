#!/usr/bin/env python3
"""Run models exported by `afpq export` with ONNX Runtime and compare their top-1 predictions
with afpq's simulation of the same .afp file, image by image, on the bundled CIFAR-10 images.

    check_export_ort.py --afpq target/debug/afpq [--workdir DIR]

For each case it quantizes the bundled ResNet-8 (`afpq quantize`), exports it (`afpq export`),
runs `afpq run FILE.afp IMAGES --json --save-input x.npy` (afpq's predictions and its exact
preprocessed input), and runs the exported model on x.npy with ONNX Runtime (CPU).
Weights-only plans must agree on every image; plans with quantized activations on at least
MIN_ACT_AGREEMENT percent (a value that lies on a rounding boundary of the activation grid can
round the other way when the two runtimes sum in a different order). Exits 1 on a mismatch.
Prints one line per case and a JSON summary on the last line.
"""
import argparse, json, os, subprocess, sys, tempfile
import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../.."))
CARD = os.path.join(ROOT, "assets/models/resnet8_cifar10.json")
DATA = os.path.join(ROOT, "assets/images/cifar10-test-500")
MIN_ACT_AGREEMENT = 99.0

# name, quantize flags, export flags, weights only
CASES = [
    ("afp5-fake", ["--bits", "5"], ["--mode", "fake"], True),
    ("afp5-bc-fake", ["--bits", "5", "--bias-correct"], ["--mode", "fake"], True),
    ("afp5-qdq", ["--bits", "5"], ["--mode", "qdq"], True),
    ("afp4-qdq", ["--bits", "4"], ["--mode", "qdq"], True),
    ("int8-qdq", ["--format", "int", "--bits", "8"], ["--mode", "qdq"], True),
    ("int4-qdq", ["--format", "int", "--bits", "4"], ["--mode", "qdq"], True),
    ("fp8-e4m3-qdq", ["--format", "fp8-e4m3"], ["--mode", "qdq", "--allow-fake"], True),
    ("fp8-e5m2-qdq", ["--format", "fp8-e5m2"], ["--mode", "qdq", "--allow-fake"], True),
    ("fp4-e2m1-qdq", ["--format", "fp4-e2m1"], ["--mode", "qdq"], True),
    ("int8-acts-int8-qdq", ["--format", "int", "--bits", "8", "--acts", "8", "--act-format", "int"],
     ["--mode", "qdq"], False),
    ("afp6-acts8-qdq", ["--bits", "6", "--acts", "8", "--bias-correct"], ["--mode", "qdq", "--allow-fake"], False),
]


def afpq(binary, args):
    r = subprocess.run([binary] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("afpq %s failed:\n%s" % (" ".join(args), r.stderr))
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--afpq", required=True, help="the afpq binary")
    ap.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    a = ap.parse_args()
    work = a.workdir or tempfile.mkdtemp(prefix="afpq-export-ort-")
    os.makedirs(work, exist_ok=True)
    items = []
    with open(os.path.join(DATA, "labels.txt")) as f:
        for line in f:
            if line.strip():
                name, label = line.rsplit(maxsplit=1)
                items.append((os.path.join(DATA, name), int(label)))
    images = [p for p, _ in items]
    labels = np.array([l for _, l in items])
    print("onnxruntime %s, onnx %s, %d images" % (ort.__version__, onnx.__version__, len(images)))
    results, failed = [], False
    for name, qflags, eflags, weights_only in CASES:
        afp = os.path.join(work, name + ".afp")
        out = os.path.join(work, name + ".onnx")
        x_path = os.path.join(work, name + ".x.npy")
        afpq(a.afpq, ["quantize", "--card", CARD, "-o", afp, "--quiet"] + qflags)
        exp = json.loads(afpq(a.afpq, ["export", afp, "-o", out, "--json"] + eflags).strip().splitlines()[-1])
        sim = json.loads(afpq(a.afpq, ["run", afp] + images + ["--card", CARD, "--json", "--save-input", x_path]))
        afpq_top1 = np.array([r["top5"][0]["class"] for r in sim])
        x = np.load(x_path)
        sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
        y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        ort_top1 = y.argmax(axis=1)
        agree = 100.0 * float((ort_top1 == afpq_top1).mean())
        ok = agree == 100.0 if weights_only else agree >= MIN_ACT_AGREEMENT
        failed |= not ok
        types = sorted({l["weight_type"] for l in exp["report"]["layers"]})
        acts = sorted({l["act_type"] or "FLOAT" for l in exp["report"]["layers"]})
        r = {
            "case": name, "opset": exp["report"]["opset"], "weight_types": types,
            "input_types": acts if not weights_only else None,
            "notes": len(exp["report"]["notes"]),
            "afpq_top1": 100.0 * float((afpq_top1 == labels).mean()),
            "ort_top1": 100.0 * float((ort_top1 == labels).mean()),
            "agreement": agree, "ok": ok,
        }
        results.append(r)
        print("%-20s %s opset %d weights %s%s: afpq top-1 %.1f%%, ORT top-1 %.1f%%, same top-1 on %.1f%% of images" % (
            name, "ok  " if ok else "FAIL", r["opset"], "/".join(types),
            "" if weights_only else " inputs " + "/".join(acts),
            r["afpq_top1"], r["ort_top1"], agree))
    print(json.dumps({"onnxruntime": ort.__version__, "images": len(images), "cases": results}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

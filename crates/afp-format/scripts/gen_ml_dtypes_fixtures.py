#!/usr/bin/env python3
"""Writes the value table of every code of the standard low-bit float formats, as decoded by
ml_dtypes (an independent implementation), into tests/fixtures/. Used as the oracle in
tests/oracle_ml_dtypes.rs.

Usage: python3 -m venv /tmp/mlenv && /tmp/mlenv/bin/pip install ml_dtypes numpy
       /tmp/mlenv/bin/python scripts/gen_ml_dtypes_fixtures.py
"""
import os
import ml_dtypes
import numpy as np

FORMATS = [
    ("float4_e2m1fn", 4),
    ("float6_e2m3fn", 6),
    ("float6_e3m2fn", 6),
    ("float8_e4m3fn", 8),
    ("float8_e5m2", 8),
]

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
for name, bits in FORMATS:
    dt = getattr(ml_dtypes, name)
    # Sub-byte ml_dtypes store one code per byte in the low bits.
    codes = np.arange(2**bits, dtype=np.uint8)
    vals = codes.view(dt).astype(np.float64)
    path = os.path.join(out, f"ml_dtypes_{name}.txt")
    with open(path, "w") as f:
        f.write(f"# ml_dtypes {ml_dtypes.__version__} {name}: code (decimal) and its value (float64 repr)\n")
        for c, v in zip(codes, vals):
            f.write(f"{int(c)} {float(v)!r}\n")
    print(path)

# Encoding oracle: random float32 values inside each format's range (ml_dtypes does not saturate,
# so stay inside), log-uniform magnitudes to exercise every binade and the subnormals, plus exact
# midpoints between neighbouring levels (ties), with ml_dtypes' round-to-nearest-even code.
rng = np.random.default_rng(12345)
for name, bits in FORMATS:
    dt = getattr(ml_dtypes, name)
    codes = np.arange(2**bits, dtype=np.uint8)
    levels = np.unique(codes.view(dt).astype(np.float64))
    levels = levels[np.isfinite(levels)]
    top = float(np.max(np.abs(levels)))
    tiny = float(np.min(np.abs(levels[levels != 0])))
    mags = np.exp(rng.uniform(np.log(tiny / 4), np.log(top), 3000))
    signs = rng.choice([-1.0, 1.0], 3000)
    mids = (levels[:-1] + levels[1:]) / 2
    vals = np.concatenate([mags * signs, mids]).astype(np.float32)
    enc = vals.astype(dt).view(np.uint8)
    path = os.path.join(out, f"ml_dtypes_{name}_encode.txt")
    with open(path, "w") as f:
        f.write(f"# ml_dtypes {ml_dtypes.__version__} {name}: float32 bits (hex) and the code ml_dtypes rounds it to\n")
        for v, c in zip(vals, enc):
            f.write(f"{v.view(np.uint32):08x} {int(c)}\n")
    print(path)

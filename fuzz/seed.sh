#!/usr/bin/env bash
# Seeds the fuzz corpora: the engine's ONNX operator fixtures, and .afp files of the bundled
# ResNet-8 (5-bit AFP, INT8, 6-bit AFP with 8-bit activations).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p fuzz/corpus/afp_file fuzz/corpus/onnx_model
cp crates/afp-engine/tests/fixtures/ops/*.onnx fuzz/corpus/onnx_model/
cargo build -p afpq
card=assets/models/resnet8_cifar10.json
target/debug/afpq quantize --card $card -o fuzz/corpus/afp_file/w5.afp --bits 5 --quiet
target/debug/afpq quantize --card $card -o fuzz/corpus/afp_file/int8.afp --format int --bits 8 --quiet
target/debug/afpq quantize --card $card -o fuzz/corpus/afp_file/a8.afp --bits 6 --acts 8 --quiet
rm -f fuzz/corpus/afp_file/*.report.json

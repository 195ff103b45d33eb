//! `afpq export` on the bundled ResNet-8: the fake export evaluates to the same top-1 as the
//! .afp file; QDQ exports have the standard types, one DequantizeLinear per weight, and
//! dequantize to exactly the fake export's weights; bad input fails clearly with no output.

use afp_onnx::{DataType, ModelProto, TensorProto};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn card() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/models/resnet8_cifar10.json")
        .display()
        .to_string()
}

fn afpq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_afpq"))
        .args(args)
        .output()
        .expect("run afpq")
}

fn ok(args: &[&str]) -> Output {
    let out = afpq(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("afpq-x-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn quantize(dir: &Path, name: &str, flags: &[&str]) -> String {
    let afp = dir.join(format!("{name}.afp")).display().to_string();
    let card = card();
    let mut args = vec!["quantize", "--card", &card, "-o", &afp, "--quiet"];
    args.extend_from_slice(flags);
    ok(&args);
    afp
}

fn top1(model: &str) -> f64 {
    let out = ok(&["eval", model, "--card", &card(), "--json", "--quiet"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["top1"].as_f64().unwrap()
}

fn load(path: &str) -> ModelProto {
    afp_onnx::read_model(Path::new(path)).unwrap()
}

fn opset(m: &ModelProto) -> i64 {
    m.opset_import
        .iter()
        .find(|o| o.domain().is_empty())
        .unwrap()
        .version()
}

fn initializer<'a>(m: &'a ModelProto, name: &str) -> &'a TensorProto {
    m.graph
        .as_ref()
        .unwrap()
        .initializer
        .iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("no initializer {name:?}"))
}

/// Checks every DequantizeLinear of a weight in `qdq`: its input has type `want`, its output
/// feeds a Conv or Gemm as the weight, and `int8 * scale` (per axis) equals the weight of
/// the fake export `fake` exactly. Returns how many there are.
fn check_dequantized_weights(qdq: &ModelProto, fake: &ModelProto, want: DataType) -> usize {
    let g = qdq.graph.as_ref().unwrap();
    let mut count = 0;
    for n in g.node.iter().filter(|n| n.op_type() == "DequantizeLinear") {
        let q = initializer(qdq, &n.input[0]);
        assert_eq!(q.data_type, Some(want as i32), "{}", n.name());
        let out = &n.output[0];
        assert!(g
            .node
            .iter()
            .any(|c| matches!(c.op_type(), "Conv" | "Gemm") && c.input.get(1) == Some(out)));
        let scale = afp_onnx::tensor_f32(initializer(qdq, &n.input[1])).unwrap();
        let dims = afp_onnx::tensor_dims(q).unwrap();
        let axis = afp_onnx::attr_int(n, "axis").unwrap_or(1) as usize;
        let raw = q.raw_data.as_ref().unwrap();
        let expected = afp_onnx::tensor_f32(initializer(fake, out)).unwrap();
        assert_eq!(raw.len(), expected.len());
        // Elements per step of the axis, and the axis length.
        let inner: usize = dims[axis + 1..].iter().product();
        for (i, (&b, &e)) in raw.iter().zip(&expected).enumerate() {
            let s = if scale.len() == 1 {
                scale[0]
            } else {
                scale[(i / inner) % dims[axis]]
            };
            assert_eq!(b as i8 as f32 * s, e, "{out} element {i}");
        }
        count += 1;
    }
    count
}

#[test]
fn fake_export_evaluates_like_the_afp_file_and_is_deterministic() {
    let dir = tmp("fake");
    let afp = quantize(&dir, "w5", &["--bits", "5", "--bias-correct"]);
    let onnx = dir.join("w5.onnx").display().to_string();
    ok(&["export", &afp, "-o", &onnx, "--mode", "fake"]);
    let bytes = std::fs::read(&onnx).unwrap();
    ok(&["export", &afp, "-o", &onnx, "--mode", "fake"]);
    assert_eq!(std::fs::read(&onnx).unwrap(), bytes);
    let (a, b) = (top1(&afp), top1(&onnx));
    println!("5 bits, bias-corrected: .afp top-1 {a}, exported ONNX top-1 {b}");
    assert_eq!(a, b);
    // The weights changed: the export is not the FP32 model.
    assert_ne!(b, 75.2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn qdq_exports_have_standard_types_and_exact_weights() {
    let dir = tmp("qdq");
    let s = |p: PathBuf| p.display().to_string();
    // INT8 with real per-channel scales: every layer.
    let afp = quantize(&dir, "int8", &["--format", "int", "--bits", "8"]);
    let (qdq, fake) = (s(dir.join("int8.qdq.onnx")), s(dir.join("int8.fake.onnx")));
    ok(&["export", &afp, "-o", &qdq, "--mode", "qdq"]);
    ok(&["export", &afp, "-o", &fake, "--mode", "fake"]);
    let (q, f) = (load(&qdq), load(&fake));
    assert_eq!(check_dequantized_weights(&q, &f, DataType::Int8), 10);
    assert_eq!(opset(&q), 13);
    // AFP 5 bits: integer grids (AFP(0,4)/(1,3)/(2,2)/(3,1) all fit int8), scale 2^(t-M).
    let afp = quantize(&dir, "w5", &["--bits", "5"]);
    let (qdq, fake) = (s(dir.join("w5.qdq.onnx")), s(dir.join("w5.fake.onnx")));
    ok(&["export", &afp, "-o", &qdq, "--mode", "qdq"]);
    ok(&["export", &afp, "-o", &fake, "--mode", "fake"]);
    assert_eq!(
        check_dequantized_weights(&load(&qdq), &load(&fake), DataType::Int8),
        10
    );

    // FP8 E4M3: layers that use AFP's 480 code (E4M3FN's NaN) have no ONNX type.
    let afp = quantize(&dir, "fp8", &["--format", "fp8-e4m3"]);
    let qdq = s(dir.join("fp8.onnx"));
    let out = afpq(&["export", &afp, "-o", &qdq, "--mode", "qdq"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no ONNX type") && err.contains("--allow-fake") && err.contains("Conv2D"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!Path::new(&qdq).exists());
    let out = ok(&[
        "export",
        &afp,
        "-o",
        &qdq,
        "--mode",
        "qdq",
        "--allow-fake",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = load(&qdq);
    assert!(opset(&m) >= 19);
    let g = m.graph.as_ref().unwrap();
    let fp8: Vec<&TensorProto> = g
        .initializer
        .iter()
        .filter(|t| t.data_type == Some(DataType::Float8e4m3fn as i32))
        .collect();
    let dq = g
        .node
        .iter()
        .filter(|n| n.op_type() == "DequantizeLinear")
        .count();
    let typed = v["report"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["weight_type"] == "FLOAT8E4M3FN")
        .count();
    println!("fp8-e4m3: {typed} of 10 layers as FLOAT8E4M3FN");
    assert!(typed >= 1 && typed == fp8.len() && dq == typed, "{v}");
    for t in fp8 {
        // One byte per weight, and never the NaN pattern.
        let raw = t.raw_data.as_ref().unwrap();
        assert_eq!(raw.len(), afp_onnx::element_count(t).unwrap());
        assert!(raw.iter().all(|&b| b & 0x7f != 0x7f));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_fails_clearly_without_output() {
    let dir = tmp("bad");
    let out_path = dir.join("o.onnx").display().to_string();
    let afp = quantize(
        &dir,
        "a8",
        &["--format", "int", "--bits", "8", "--acts", "8"],
    );
    let bogus = dir.join("bogus.afp");
    std::fs::write(&bogus, b"not a safetensors file at all").unwrap();
    let bogus = bogus.display().to_string();
    for (args, want) in [
        (
            vec!["export", &afp, "-o", &out_path, "--mode", "fake"],
            "--weights-only",
        ),
        (
            vec!["export", &afp, "-o", &out_path, "--mode", "int"],
            "fake or qdq",
        ),
        (
            vec!["export", &bogus, "-o", &out_path],
            "not a safetensors file",
        ),
        (
            vec!["export", "/nonexistent.afp", "-o", &out_path],
            "cannot open",
        ),
    ] {
        let out = afpq(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(want) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
        assert!(!Path::new(&out_path).exists());
    }
    // With --weights-only the same plan exports.
    ok(&[
        "export",
        &afp,
        "-o",
        &out_path,
        "--mode",
        "fake",
        "--weights-only",
    ]);
    std::fs::remove_dir_all(&dir).ok();
}

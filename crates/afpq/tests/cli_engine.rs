//! `afpq inspect`, `eval`, `run` and `bench` on the bundled ResNet-8 and CIFAR-10 images
//! (no ../shared needed), and their errors on bad input.

use std::path::PathBuf;
use std::process::Command;

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

fn afpq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_afpq"))
        .args(args)
        .output()
        .expect("run afpq")
}

fn json_of(args: &[&str]) -> serde_json::Value {
    let out = afpq(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn s(p: PathBuf) -> String {
    p.display().to_string()
}

#[test]
fn inspect_counts_match_the_model_card() {
    let model = s(assets().join("models/resnet8_cifar10.onnx"));
    let v = json_of(&["inspect", &model, "--json"]);
    // The card: 77,706 float parameters, 12,501,632 MACs per image, 24 nodes.
    assert_eq!(v["params"], 77706);
    assert_eq!(v["macs"], 12501632);
    assert_eq!(v["nodes"], 24);
    assert_eq!(v["op_counts"]["Conv"], 9);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 10); // 9 Conv + 1 Gemm
    assert!(layers
        .iter()
        .all(|l| l["weight_stats"]["absmax"].as_f64().unwrap() > 0.0));
    assert_eq!(
        v["inputs"][0]["shape_at_batch_1"],
        serde_json::json!([1, 3, 32, 32])
    );
}

#[test]
fn eval_on_the_bundled_images() {
    let card = s(assets().join("models/resnet8_cifar10.json"));
    let v = json_of(&[
        "eval",
        "--card",
        &card,
        "--json",
        "--batch",
        "16",
        "--threads",
        "2",
    ]);
    assert_eq!(v["images"], 500);
    let top1 = v["top1"].as_f64().unwrap();
    // Measured: 75.2% (376/500) on these 500 images; the 2000-image reference is 76.4%.
    assert_eq!(v["top1_correct"], 376, "top-1 {top1}");
    assert!(v["top5"].as_f64().unwrap() > 97.0);
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0);
    // Batch size and thread count do not change the results.
    let v1 = json_of(&[
        "eval",
        "--card",
        &card,
        "--json",
        "--batch",
        "7",
        "--threads",
        "1",
        "--limit",
        "100",
    ]);
    let v2 = json_of(&[
        "eval",
        "--card",
        &card,
        "--json",
        "--batch",
        "32",
        "--threads",
        "2",
        "--limit",
        "100",
    ]);
    assert_eq!(v1["top1_correct"], v2["top1_correct"]);
    assert_eq!(v1["top5_correct"], v2["top5_correct"]);
    assert_eq!(v1["images"], 100);
}

#[test]
fn eval_with_a_preset_instead_of_a_card() {
    let model = s(assets().join("models/resnet8_cifar10.onnx"));
    let data = s(assets().join("images/cifar10-test-500"));
    let v = json_of(&[
        "eval",
        &model,
        "--data",
        &data,
        "--preprocess",
        "raw",
        "--crop",
        "32",
        "--limit",
        "50",
        "--json",
    ]);
    assert_eq!(v["images"], 50);
    let card = s(assets().join("models/resnet8_cifar10.json"));
    let w = json_of(&["eval", "--card", &card, "--limit", "50", "--json"]);
    assert_eq!(v["top1_correct"], w["top1_correct"]);
}

#[test]
fn run_names_the_classes() {
    let model = s(assets().join("models/resnet8_cifar10.onnx"));
    let card = s(assets().join("models/resnet8_cifar10.json"));
    let img = s(assets().join("images/cifar10-test-500/truck/0000.jpg"));
    let v = json_of(&["run", &model, &img, &img, "--card", &card, "--json"]);
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    let top = &arr[0]["top5"];
    assert_eq!(top.as_array().unwrap().len(), 5);
    assert!(top[0]["name"].is_string(), "{top}");
    let p: f64 = top
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["probability"].as_f64().unwrap())
        .sum();
    assert!(p <= 1.0 + 1e-5);
    assert_eq!(arr[0], arr[1]);
}

#[test]
fn bench_reports_each_configuration() {
    let model = s(assets().join("models/resnet8_cifar10.onnx"));
    let v = json_of(&[
        "bench",
        &model,
        "--batch",
        "1,4",
        "--threads",
        "1",
        "--seconds",
        "0.05",
        "--warmup",
        "1",
        "--json",
    ]);
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .all(|r| r["images_per_s"].as_f64().unwrap() > 0.0));
    // Rounds alternate with the peer; alone they are refused.
    let out = afpq(&["bench", &model, "--rounds", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rounds"));
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = afpq(&[
        "eval",
        "/nonexistent/model.onnx",
        "--preprocess",
        "raw",
        "--crop",
        "32",
        "--data",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("/nonexistent").count(),
        1,
        "the folder, once: {err}"
    );
    // A missing model: the OS's reason once, not once per level of the error chain.
    let out = afpq(&["inspect", "/nonexistent/model.onnx"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let reason = std::fs::read("/nonexistent/model.onnx")
        .unwrap_err()
        .to_string();
    assert_eq!(err.matches(&reason).count(), 1, "{err}");
    // ... and the file once.
    assert_eq!(err.matches("/nonexistent/model.onnx").count(), 1, "{err}");
    // A file that is not ONNX.
    let card = s(assets().join("models/resnet8_cifar10.json"));
    let out = afpq(&["inspect", &card]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resnet8_cifar10.json"));
    // A card whose preprocessing does not fit the model.
    let model = s(assets().join("models/resnet8_cifar10.onnx"));
    let data = s(assets().join("images/cifar10-test-500"));
    let out = afpq(&[
        "eval",
        &model,
        "--data",
        &data,
        "--preprocess",
        "torchvision",
        "--limit",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("224x224") && err.contains("32x32"), "{err}");
    // An empty image folder.
    let dir = std::env::temp_dir().join(format!("afpq-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = afpq(&[
        "eval",
        &model,
        "--data",
        &s(dir.clone()),
        "--preprocess",
        "raw",
        "--crop",
        "32",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&s(dir.clone())));
    std::fs::remove_dir_all(&dir).ok();
}

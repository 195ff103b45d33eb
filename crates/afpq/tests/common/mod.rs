//! Helpers of the CLI tests over the bundled assets (`mod common;` in a test file).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

pub fn card() -> String {
    assets()
        .join("models/resnet8_cifar10.json")
        .display()
        .to_string()
}

pub fn model() -> String {
    assets()
        .join("models/resnet8_cifar10.onnx")
        .display()
        .to_string()
}

pub fn image(class: &str, file: &str) -> String {
    assets()
        .join("images/cifar10-test-500")
        .join(class)
        .join(file)
        .display()
        .to_string()
}

pub fn afpq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_afpq"))
        .args(args)
        .output()
        .expect("run afpq")
}

/// The output of a run that must succeed.
pub fn ok(args: &[&str]) -> Output {
    let out = afpq(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The JSON on stdout of a run that must succeed.
pub fn json(args: &[&str]) -> serde_json::Value {
    let out = ok(args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A fresh folder for one test.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("afpq-t-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Quantizes the bundled ResNet-8 (5-bit weights, 8-bit inputs) to `dir/r8.afp`.
pub fn quantize(dir: &std::path::Path) -> String {
    let plan = dir.join("r8.afp").display().to_string();
    ok(&[
        "quantize",
        "--card",
        &card(),
        "-o",
        &plan,
        "--bits",
        "5",
        "--acts",
        "8",
        "--quiet",
    ]);
    plan
}

pub fn num(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} is not a number in {v}"))
}

/// `afpq run MODEL IMAGES --card CARD --json --engine ENGINE`: the top-5 (class, probability)
/// of every image.
pub fn top5(model: &str, card: &str, engine: &str, imgs: &[String]) -> Vec<Vec<(u64, f64)>> {
    let mut args = vec!["run", model, "--card", card, "--json", "--engine", engine];
    args.extend(imgs.iter().map(String::as_str));
    json(&args)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["top5"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["class"].as_u64().unwrap(),
                        t["probability"].as_f64().unwrap(),
                    )
                })
                .collect()
        })
        .collect()
}

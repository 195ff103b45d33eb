//! `afpq eval` reproduces each model card's reference top-1 and top-5 (ONNX Runtime, Pillow
//! preprocessing) within 0.3 points on the card's whole dataset. Needs AFPQ_SHARED_DATA
//! (skipped with a message when unset; CI sets it).

use std::path::PathBuf;
use std::process::Command;

fn check(model: &str) {
    let Some(dir) = std::env::var_os("AFPQ_SHARED_DATA") else {
        eprintln!("skipped: AFPQ_SHARED_DATA is not set");
        return;
    };
    let card = PathBuf::from(dir)
        .join("models")
        .join(format!("{model}.json"));
    assert!(card.is_file(), "AFPQ_SHARED_DATA has no {}", card.display());
    let out = Command::new(env!("CARGO_BIN_EXE_afpq"))
        .args(["eval", "--card"])
        .arg(&card)
        .args(["--json", "--batch", "8", "--threads", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (top1, top5) = (v["top1"].as_f64().unwrap(), v["top5"].as_f64().unwrap());
    let (r1, r5) = (
        v["reference_top1"].as_f64().unwrap(),
        v["reference_top5"].as_f64().unwrap(),
    );
    println!(
        "{model}: {} images, top-1 {top1:.2} (reference {r1:.2}), top-5 {top5:.2} (reference {r5:.2}), top-1 equal to the reference's on {:.2}% of images",
        v["images"], v["reference_top1_agreement"]
    );
    assert!(
        (top1 - r1).abs() <= 0.3,
        "{model}: top-1 {top1} vs reference {r1}"
    );
    assert!(
        (top5 - r5).abs() <= 0.3,
        "{model}: top-5 {top5} vs reference {r5}"
    );
}

#[test]
fn resnet8_cifar10_whole_dataset() {
    check("resnet8_cifar10");
}

#[test]
fn resnet50_whole_dataset() {
    check("resnet50");
}

#[test]
fn efficientnet_lite0_whole_dataset() {
    check("efficientnet_lite0");
}

#[test]
fn mobilenet_v2_random_whole_dataset() {
    check("mobilenet_v2_random");
}

//! `afpq demo`: the table's fields in --json, sane accuracy, size and energy, the files it
//! writes, and its report.

mod common;
use common::*;

#[test]
fn demo_json_has_the_table_and_writes_the_model_and_the_report() {
    let dir = tmp("demo");
    let out = dir.join("d").display().to_string();
    let d = json(&[
        "demo",
        "-o",
        &out,
        "--limit",
        "200",
        "--bench-seconds",
        "0.2",
        "--json",
    ]);
    for k in [
        "fp32_top1",
        "afp_top1",
        "drop",
        "fp32_bytes",
        "afp_bytes",
        "compression",
        "fp32_uj",
        "int8_dynamic_uj",
        "afp_uj",
        "fp32_images_per_s",
        "afp_images_per_s",
    ] {
        assert!(num(&d, k).is_finite(), "{k} in {d}");
    }
    assert_eq!(d["images"], 200);
    // ResNet-8: FP32 top-1 is about 75% on the bundled images; 5-bit AFP weights with 8-bit
    // inputs and GPTQ lose 0.4 points on all 500 (measured); allow for the smaller subset.
    let (f, a) = (num(&d, "fp32_top1"), num(&d, "afp_top1"));
    assert!((65.0..=85.0).contains(&f), "FP32 top-1 {f}");
    assert!(num(&d, "drop").abs() <= 3.0, "drop {}", num(&d, "drop"));
    assert!((num(&d, "drop") - (f - a)).abs() < 1e-9);
    // The .afp file is what the table says, and several times smaller than the ONNX model.
    let afp = std::fs::metadata(d["afp_file"].as_str().unwrap())
        .unwrap()
        .len();
    assert_eq!(Some(afp), d["afp_bytes"].as_u64());
    assert!(num(&d, "compression") > 4.0, "{d}");
    assert_eq!(
        std::fs::metadata(model()).unwrap().len(),
        d["fp32_bytes"].as_u64().unwrap()
    );
    // Energy: AFP below INT8 dynamic below FP32 (docs/ENERGY.md).
    let (e32, e8, ea) = (
        num(&d, "fp32_uj"),
        num(&d, "int8_dynamic_uj"),
        num(&d, "afp_uj"),
    );
    assert!(0.0 < ea && ea < e8 && e8 < e32, "{ea} {e8} {e32}");
    assert!(num(&d, "fp32_images_per_s") > 0.0 && num(&d, "afp_images_per_s") > 0.0);
    // The report, with the sweep's plot.
    let html = std::fs::read_to_string(d["report"].as_str().unwrap()).unwrap();
    assert!(html.contains("<svg") && html.contains("id=\"energy\""));
    assert!(
        !html.contains("No sweep given"),
        "the demo's report has no sweep"
    );
    let sweep = d["sweep"].as_str().expect("a sweep");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sweep).unwrap()).unwrap();
    assert_eq!(s["rows"].as_array().unwrap().len(), 1 + 5 + 5 + 1, "{s}");
    // The quantized model runs on its own.
    let e = json(&[
        "eval",
        d["afp_file"].as_str().unwrap(),
        "--card",
        &card(),
        "--limit",
        "200",
        "--json",
    ]);
    assert_eq!(num(&e, "top1"), a);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn demo_prints_one_table() {
    let dir = tmp("demo-text");
    let out = dir.join("d").display().to_string();
    let o = ok(&[
        "demo",
        "-o",
        &out,
        "--limit",
        "40",
        "--no-sweep",
        "--bench-seconds",
        "0.1",
        "--quiet",
    ]);
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8(o.stdout).unwrap();
    for row in [
        "top-1 accuracy",
        "size (bytes)",
        "energy per image (uJ)",
        "speed (images/s)",
    ] {
        assert_eq!(text.matches(row).count(), 1, "{row}: {text}");
    }
    assert!(text.contains("FP32") && text.contains("INT8 dynamic") && text.contains("AFP"));
    assert!(dir.join("d/resnet8.afp").is_file() && dir.join("d/index.html").is_file());
    assert!(!dir.join("d/sweep").exists(), "--no-sweep wrote a sweep");
    std::fs::remove_dir_all(&dir).ok();
}

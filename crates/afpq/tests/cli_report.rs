//! `afpq report`: a self-contained HTML page with inline SVG plots and every section, the
//! same bytes from two runs, the decoded weights when the FP32 model is gone, and clear
//! errors (file named, nothing written) on a damaged or missing .afp file.

mod common;
use common::*;

const SWEEP: &str = r#"{"model": "resnet8_cifar10.onnx", "images": 500, "rows": [
 {"format": "fp32", "bits": 32, "top1": 75.2, "avg_weight_bits": 32.0, "weight_bytes": 326964},
 {"format": "afp", "bits": 4, "top1": 73.4, "avg_weight_bits": 4.0, "weight_bytes": 39000},
 {"format": "afp", "bits": 5, "top1": 74.8, "avg_weight_bits": 5.0, "weight_bytes": 48700},
 {"format": "int", "bits": 4, "top1": 73.3, "avg_weight_bits": 4.0, "weight_bytes": 40000},
 {"format": "int", "bits": 5, "top1": 73.8, "avg_weight_bits": 5.0, "weight_bytes": 49700},
 {"format": "fp8-e4m3", "bits": 8, "top1": 75.8, "avg_weight_bits": 8.0, "weight_bytes": 77700}
]}"#;

const EVAL: &str = r#"{"images": 500, "top1": 73.6, "fp32_top1": 75.2}"#;

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn report_is_one_self_contained_page_with_every_section_and_the_same_bytes() {
    let dir = tmp("report");
    let plan = quantize(&dir);
    let sweep = dir.join("sweep.json");
    let eval = dir.join("eval.json");
    std::fs::write(&sweep, SWEEP).unwrap();
    std::fs::write(&eval, EVAL).unwrap();
    let (s, e) = (sweep.display().to_string(), eval.display().to_string());
    let mut pages = Vec::new();
    for run in ["a", "b"] {
        let out = dir.join(run).display().to_string();
        let w = json(&[
            "report", &plan, "-o", &out, "--sweep", &s, "--eval", &e, "--json",
        ]);
        assert_eq!(w["weights"], "fp32", "{w}");
        assert_eq!(w["histogram_layers"].as_array().unwrap().len(), 4, "{w}");
        let path = dir.join(run).join("index.html");
        assert_eq!(w["report"], path.display().to_string());
        pages.push(std::fs::read(&path).unwrap());
    }
    assert!(pages[0] == pages[1], "two runs wrote different bytes");
    let html = String::from_utf8(pages.remove(0)).unwrap();
    // Plots: bits, 4 histograms, accuracy against size, energy.
    assert!(
        html.matches("<svg").count() >= 7,
        "{} <svg",
        html.matches("<svg").count()
    );
    for id in [
        "summary",
        "bits",
        "histograms",
        "accuracy",
        "energy",
        "layers",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "no section {id}");
    }
    // Self-contained: no scripts, no external files (the SVG namespace is a name, not a link).
    let bare = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for bad in ["<script", "src=", "<link", "http://", "https://", "@import"] {
        assert!(!bare.contains(bad), "the page has {bad}");
    }
    // The header: compression as `afpq inspect --json` computes it, bits and accuracy.
    let inspect = json(&["inspect", &plan, "--json"]);
    assert!(
        html.contains(&format!("{:.2}x smaller", num(&inspect, "compression"))),
        "no compression of {}",
        inspect["compression"]
    );
    assert!(html.contains("5.000 bits on average"));
    assert!(html.contains("73.60% on 500 images; FP32 75.20%, drop 1.60 points"));
    // The sweep's families are in the accuracy plot's legend.
    for fam in ["afp", "int", "fp8-e4m3", "FP32 (75.20%)"] {
        assert!(
            html.contains(&format!(">\n{fam}\n</text>")),
            "legend has no {fam}"
        );
    }
    // One table row per layer, three energy rows (FP32, INT8 dynamic, AFP).
    assert_eq!(html.matches("<tr><td>").count(), 10, "layer rows");
    assert_eq!(
        html.matches("<tr><td class=\"l\">").count(),
        3,
        "energy rows"
    );

    // Without a sweep the section says how to make one; without --eval, how to measure.
    let out = dir.join("c").display().to_string();
    ok(&["report", &plan, "-o", &out, "--quiet"]);
    let html = read(&dir.join("c/index.html"));
    assert!(html.contains("No sweep given. Make one with <code>afpq sweep"));
    assert!(html.contains("not measured here"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn report_uses_the_decoded_weights_when_the_fp32_model_is_gone() {
    let dir = tmp("report-decoded");
    let copy = dir.join("m.onnx");
    std::fs::copy(model(), &copy).unwrap();
    let plan = dir.join("m.afp").display().to_string();
    let m = copy.display().to_string();
    ok(&[
        "quantize",
        &m,
        "--card",
        &card(),
        "-o",
        &plan,
        "--bits",
        "4",
        "--quiet",
    ]);
    std::fs::remove_file(&copy).unwrap();
    let out = dir.join("r").display().to_string();
    let w = json(&["report", &plan, "-o", &out, "--json"]);
    assert_eq!(w["weights"], "decoded", "{w}");
    let html = read(&dir.join("r/index.html"));
    assert!(html.contains("weights of 4 layers") && html.contains("decoded (the FP32 model"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn report_errors_name_the_file_and_write_nothing() {
    let dir = tmp("report-bad");
    let plan = quantize(&dir);
    let out_dir = dir.join("out");
    let out = out_dir.display().to_string();
    let check = |args: &[&str], needle: &str| {
        let o = afpq(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?} printed results");
        assert!(
            !out_dir.join("index.html").exists(),
            "{args:?} wrote index.html"
        );
    };
    // Missing.
    let missing = dir.join("missing.afp").display().to_string();
    check(&["report", &missing, "-o", &out], &missing);
    // Damaged: a byte flipped in the middle, and cut in half.
    let bytes = std::fs::read(&plan).unwrap();
    let flipped = dir.join("flipped.afp");
    let mut b = bytes.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    std::fs::write(&flipped, &b).unwrap();
    let f = flipped.display().to_string();
    check(&["report", &f, "-o", &out], &f);
    let cut = dir.join("cut.afp");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let c = cut.display().to_string();
    check(&["report", &c, "-o", &out, "--json"], &c);
    // A sweep or evaluation that is not one.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"rows": [{"format": "afp"}]}"#).unwrap();
    let b = bad.display().to_string();
    check(&["report", &plan, "-o", &out, "--sweep", &b], &b);
    check(&["report", &plan, "-o", &out, "--eval", &b], &b);
    std::fs::remove_dir_all(&dir).ok();
}

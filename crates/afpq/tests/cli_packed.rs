//! The packed engine (integer kernels on a .afp file's codes) against the simulated one, on
//! the bundled ResNet-8: equal outputs, the plans it refuses, and what `bench` reports.

mod common;
use common::{afpq, card, json, ok, tmp};

/// Every 5th bundled image (100 of 500), sorted.
fn images() -> Vec<String> {
    let root = common::assets().join("images/cifar10-test-500");
    let mut all: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|d| d.is_dir())
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|f| f.unwrap().path().display().to_string())
        .collect();
    all.sort();
    all.into_iter().step_by(5).collect()
}

/// `afpq bench --json` for a tenth of a second at batch 1 on one thread.
fn bench_briefly(afp: &str) -> serde_json::Value {
    json(&[
        "bench",
        afp,
        "--batch",
        "1",
        "--threads",
        "1",
        "--seconds",
        "0.1",
        "--warmup",
        "1",
        "--json",
    ])
}

fn quantize(path: &str, extra: &[&str]) {
    let card = card();
    let mut args = vec![
        "quantize", "--card", &card, "-o", path, "--bits", "5", "--quiet",
    ];
    args.extend_from_slice(extra);
    ok(&args);
}

/// On ResNet-8 the two engines agree bit for bit: the integer sums are exact, and the
/// simulation's f32 sums of the same (exactly representable) products are exact too because
/// every partial sum stays below 2^24 (|n_w| <= 28, n_a <= 255, K <= 576). Both the 8-bit
/// kernels (`--int8-kernels`: E2M2 weights, u8 inputs) and the i16 path (inputs such as
/// uE2M6, integers up to 508) are checked.
#[test]
fn packed_equals_simulated_on_resnet8() {
    let dir = tmp("packed-eq");
    let imgs = images();
    for (name, extra) in [
        ("int8", &["--acts", "8", "--int8-kernels"][..]),
        ("i16", &["--acts", "8"][..]),
    ] {
        let afp = dir.join(format!("{name}.afp")).display().to_string();
        quantize(&afp, extra);
        let packed = common::top5(&afp, &card(), "packed", &imgs);
        let simulated = common::top5(&afp, &card(), "simulated", &imgs);
        assert_eq!(packed.len(), 100);
        assert_eq!(packed, simulated, "{name}: the engines differ");
    }
}

/// A plan without activation formats has no integer inputs: `--engine packed` refuses it,
/// naming the layer and the fix; `auto` falls back to the simulated engine with a note.
#[test]
fn packed_refuses_weights_only_plans() {
    let dir = tmp("packed-refuse");
    let afp = dir.join("w.afp").display().to_string();
    quantize(&afp, &[]);
    let img = common::image("cat", "0003.jpg");
    let card = card();
    let out = afpq(&["run", &afp, &img, "--card", &card, "--engine", "packed"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("packed engine") && err.contains("layer") && err.contains("--acts"),
        "{err}"
    );
    let out = afpq(&["run", &afp, &img, "--card", &card, "--engine", "auto"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("simulated engine"));
}

/// `afpq bench OUT.afp` runs the packed engine and says which kernels and how much memory.
#[test]
fn bench_reports_the_packed_engine() {
    let dir = tmp("packed-bench");
    let afp = dir.join("b.afp").display().to_string();
    quantize(&afp, &["--acts", "8", "--int8-kernels"]);
    let v = bench_briefly(&afp);
    assert_eq!(v["engine"], "packed");
    let kernels = v["kernels"].as_object().unwrap();
    assert_eq!(
        kernels.values().map(|n| n.as_u64().unwrap()).sum::<u64>(),
        10
    );
    // 77k weights as 1-byte integers, with scales and biases.
    let bytes = v["packed_weight_bytes"].as_u64().unwrap();
    assert!((77_000..100_000).contains(&bytes), "{bytes}");
    assert!(v["results"][0]["images_per_s"].as_f64().unwrap() > 0.0);
}

/// A bit budget with `--int8-kernels` spreads over the widths that have a weight format the
/// kernels run (3 to 7 bits; no 8-bit AFP format has |n| <= 64), and the result runs packed.
#[test]
fn int8_kernel_budget_skips_widths_without_formats() {
    let dir = tmp("packed-budget");
    let afp = dir.join("avg.afp").display().to_string();
    quantize(
        &afp,
        &["--avg-bits", "6.5", "--acts", "8", "--int8-kernels"],
    );
    let v = json(&["inspect", &afp, "--json"]);
    let bits: Vec<u64> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["bits"].as_u64().unwrap())
        .collect();
    assert!(bits.iter().all(|&b| (3..=7).contains(&b)), "{bits:?}");
    assert!(
        bits.iter().any(|&b| b != 5),
        "a budget, not one width: {bits:?}"
    );
    let b = bench_briefly(&afp);
    assert_eq!(b["engine"], "packed");
}

//! The packed engine (integer kernels on a .afp file's codes) against the simulated one, on
//! the bundled ResNet-8: equal outputs on the integer and lookup paths, and what `bench` reports.

mod common;
use common::{card, json, ok, tmp};

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
/// uE2M6, integers up to 508) are checked; with u8 inputs the layers pass their outputs on as
/// the next layer's codes (`fuse_quad_handover`), which must not change a bit.
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
        // With u8 inputs the layers hand their outputs over as codes (the conv pairs inside
        // the blocks); the i16 inputs do not.
        let report = bench_briefly(&afp);
        let handovers = report["code_handovers"].as_u64().unwrap();
        // Block outputs (read by the next convolution and the next residual Add) are
        // stored as f32 and as the convolution's codes.
        let codes_too = report["codes_too"].as_u64().unwrap();
        match name {
            "int8" => {
                assert!(handovers >= 3, "{name}: {handovers} handovers");
                assert!(codes_too >= 1, "{name}: {codes_too} layers write codes too");
            }
            _ => assert_eq!((handovers, codes_too), (0, 0), "{name}"),
        }
    }
}

/// Plans the integer kernels cannot run go through the lookup path (codes decoded through a
/// table, f32 multiply-add): weights only (no integer inputs), and FP8 E4M3 weights with
/// E5M2 inputs (integers beyond 16 bits). The convolutions give the simulated engine's bits
/// (same decoded weights, same FP32 kernel); the classifier's Gemm sums in another order,
/// hence the tolerance on the probabilities.
#[test]
fn packed_runs_plans_without_integer_kernels_through_lookup() {
    let dir = tmp("packed-lookup");
    let imgs = images();
    for (name, extra) in [
        ("weights-only", &[][..]),
        (
            "fp8",
            &[
                "--format",
                "fp8-e4m3",
                "--acts",
                "8",
                "--act-format",
                "fp8-e5m2",
            ][..],
        ),
    ] {
        let afp = dir.join(format!("{name}.afp")).display().to_string();
        quantize(&afp, extra);
        let v = bench_briefly(&afp);
        assert_eq!(v["engine"], "packed", "{name}");
        let kernels = v["kernels"].as_object().unwrap();
        assert!(
            kernels.keys().all(|k| k.starts_with("lookup-f32")),
            "{name}: {kernels:?}"
        );
        // One byte per weight (77k) plus a 1 KiB table per layer: a quarter of FP32.
        let bytes = v["packed_weight_bytes"].as_u64().unwrap();
        assert!((77_000..100_000).contains(&bytes), "{name}: {bytes}");
        let packed = common::top5(&afp, &card(), "packed", &imgs);
        let simulated = common::top5(&afp, &card(), "simulated", &imgs);
        assert_eq!(packed.len(), 100);
        for (i, (p, s)) in packed.iter().zip(&simulated).enumerate() {
            let classes = |t: &[(u64, f64)]| t.iter().map(|x| x.0).collect::<Vec<_>>();
            assert_eq!(classes(p), classes(s), "{name}: image {i}");
            for (a, b) in p.iter().zip(s) {
                assert!(
                    (a.1 - b.1).abs() <= 1e-5,
                    "{name}: image {i}: {p:?} vs {s:?}"
                );
            }
        }
    }
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

/// `--scale real` puts a real factor per channel on top of each AFP offset: the report lists
/// them, and the packed engine (the integer kernels multiply it into their epilogue factor)
/// agrees with the simulated one. Not bit for bit: the simulation's products of real-scaled
/// weights are rounded in f32, the integer sums are exact.
#[test]
fn real_scales_run_packed_and_are_reported() {
    let dir = tmp("packed-real");
    let afp = dir.join("r.afp").display().to_string();
    quantize(&afp, &["--acts", "8", "--scale", "real"]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("r.report.json")).unwrap()).unwrap();
    assert_eq!(report["options"]["scale"], "real");
    for l in report["layers"].as_array().unwrap() {
        let (offsets, scales) = (
            l["offsets"].as_array().unwrap(),
            l["scales"].as_array().unwrap(),
        );
        assert_eq!(offsets.len(), scales.len(), "{}", l["node"]);
        assert!(scales
            .iter()
            .all(|s| (0.5..=2.0).contains(&s.as_f64().unwrap())));
    }
    let v = json(&["inspect", &afp, "--json"]);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 10);
    assert!(
        layers.iter().all(|l| l["real_scales"] == true),
        "{layers:?}"
    );
    let v = bench_briefly(&afp);
    assert_eq!(v["engine"], "packed");
    assert!(v["kernels"]
        .as_object()
        .unwrap()
        .keys()
        .all(|k| !k.starts_with("lookup")));
    let imgs = images();
    let packed = common::top5(&afp, &card(), "packed", &imgs);
    let simulated = common::top5(&afp, &card(), "simulated", &imgs);
    let same = packed
        .iter()
        .zip(&simulated)
        .filter(|(p, s)| p[0].0 == s[0].0)
        .count();
    assert!(same >= 97, "top-1 agrees on {same} of 100 images");
    let card = card();
    let out = common::afpq(&[
        "quantize", "--card", &card, "-o", &afp, "--bits", "5", "--scale", "exact",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--scale is po2 or real"));
}

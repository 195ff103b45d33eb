//! `afpq energy` on a plan of the bundled ResNet-8: the JSON keys, totals that add up, the
//! order AFP < INT8 dynamic < FP32, table overrides, and clear errors on bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

fn afpq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_afpq"))
        .args(args)
        .output()
        .expect("run afpq")
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: Output) -> serde_json::Value {
    serde_json::from_slice(&ok(out).stdout).expect("JSON on stdout")
}

fn f(v: &serde_json::Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} is not a number in {v}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs()
}

#[test]
fn resnet8_plan_energy() {
    let dir = std::env::temp_dir().join(format!("afpq-energy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plan = dir.join("r8.afp").display().to_string();
    let card = assets().join("models/resnet8_cifar10.json");
    let card = card.display().to_string();
    ok(afpq(&[
        "quantize", "--card", &card, "-o", &plan, "--bits", "5", "--acts", "8", "--quiet",
    ]));

    let r = json(afpq(&["energy", &plan, "--json"]));
    let (afp, int8, fp32) = (f(&r, "afp_pj"), f(&r, "int8_dynamic_pj"), f(&r, "fp32_pj"));
    assert!(
        0.0 < afp && afp < int8 && int8 < fp32,
        "{afp} {int8} {fp32}"
    );
    assert!(close(f(&r["ratios"], "fp32_over_afp"), fp32 / afp));
    assert!(close(f(&r["ratios"], "int8_dynamic_over_afp"), int8 / afp));
    // AFP has no de-quantization: its compute is below INT8 dynamic's, which is below FP32's.
    let b = &r["breakdown"];
    let compute = |s: &str| f(&b[s], "compute_pj");
    assert!(compute("afp") < compute("int8_dynamic") && compute("int8_dynamic") < compute("fp32"));
    for s in ["fp32", "int8_dynamic", "afp"] {
        let parts = f(&b[s], "compute_pj") + f(&b[s], "weight_pj") + f(&b[s], "act_pj");
        assert!(close(parts, f(&b[s], "total_pj")), "{s}");
    }
    // Every Conv and the Gemm, all in the plan; per-layer rows add up to the totals.
    let layers = r["layers"].as_array().unwrap();
    assert!(layers.len() >= 8, "{}", layers.len());
    assert!(layers.iter().all(|l| l["planned"] == true));
    let sum = |s: &str| layers.iter().map(|l| f(&l[s], "total_pj")).sum::<f64>();
    assert!(close(sum("afp"), afp) && close(sum("fp32"), fp32) && close(sum("int8_dynamic"), int8));
    let macs: u64 = layers.iter().map(|l| l["macs"].as_u64().unwrap()).sum();
    assert_eq!(r["macs"].as_u64(), Some(macs));
    // FP32 weight traffic from DRAM is 640 pJ per parameter.
    let params: u64 = layers.iter().map(|l| l["params"].as_u64().unwrap()).sum();
    assert!(close(
        f(&b["fp32"], "weight_dram_pj"),
        640.0 * params as f64
    ));

    // Without DRAM, only the DRAM terms change.
    let table = dir.join("t.json");
    std::fs::write(&table, r#"{"dram_read_32b": 0}"#).unwrap();
    let t = table.display().to_string();
    let r0 = json(afpq(&["energy", &plan, "--json", "--table", &t]));
    let b0 = &r0["breakdown"];
    assert_eq!(f(&b0["afp"], "weight_dram_pj"), 0.0);
    assert_eq!(f(&b0["afp"], "act_dram_pj"), 0.0);
    assert!(close(f(&b0["afp"], "compute_pj"), compute("afp")));
    assert!(f(&r0, "afp_pj") < afp);

    // The human-readable report.
    let out = ok(afpq(&["energy", &plan]));
    let text = String::from_utf8_lossy(&out.stdout);
    for s in ["FP32", "INT8 dynamic", "AFP", "less energy"] {
        assert!(text.contains(s), "{s}: {text}");
    }

    // Bad input: a clear error, exit 1, nothing on stdout.
    std::fs::write(&table, r#"{"dram": 1}"#).unwrap();
    let model = assets().join("models/resnet8_cifar10.onnx");
    let model = model.display().to_string();
    for (args, want) in [
        (vec!["energy", &plan, "--table", &t], "dram"),
        (vec!["energy", "/nonexistent.afp"], "/nonexistent.afp"),
        (vec!["energy", &model], "not a .afp file"),
    ] {
        let out = afpq(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    std::fs::remove_dir_all(&dir).ok();
}

//! The `afpq levels` command, run as a user would.

use std::process::Command;

fn afpq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_afpq"))
        .args(args)
        .output()
        .expect("run afpq")
}

#[test]
fn levels_json_of_fp4() {
    let out = afpq(&["levels", "fp4-e2m1", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "E2M1");
    assert_eq!(v["offset"], 0);
    assert_eq!(v["bits"], 4);
    let levels: Vec<f64> = v["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(
        levels,
        vec![-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    );
}

#[test]
fn levels_offsets_aliases_and_zero_modes() {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = afpq(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = json(&["levels", "fp8-e4m3", "--json"]);
    assert_eq!(v["offset"], -6);
    assert_eq!(
        v["levels"].as_array().unwrap().last().unwrap().as_f64(),
        Some(480.0)
    );
    let v = json(&["levels", "int4", "--json"]);
    let l: Vec<f64> = v["levels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(l, (-7..=7).map(|i| i as f64).collect::<Vec<_>>());
    let v = json(&["levels", "uE2M3", "--offset", "-3", "--json"]);
    assert_eq!(v["bits"], 5);
    assert_eq!(v["levels"].as_array().unwrap().len(), 32);
    assert_eq!(v["levels"][0].as_f64(), Some(0.0));
    let v = json(&["levels", "E2M1", "--zero-mode", "no-subnormal", "--json"]);
    assert_eq!(v["zero_mode"], "no-subnormal");
    assert_eq!(
        v["levels"].as_array().unwrap().last().unwrap().as_f64(),
        Some(12.0)
    );
    let out = afpq(&["levels", "E3M2"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("max 112"));
}

#[test]
fn malformed_format_exits_2_with_a_clear_message() {
    for bad in ["E9M9", "fp5-e2m2", "int12", "banana"] {
        let out = afpq(&["levels", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad) && err.contains("format"), "{bad}: {err}");
    }
    let out = afpq(&["levels", "E3M2", "--zero-mode", "weird"]);
    assert_eq!(out.status.code(), Some(2));
    // An offset outside the finite f32 range is a runtime error (exit 1), not a panic.
    let out = afpq(&["levels", "E4M3", "--offset", "500"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("offset 500"));
}

/// A reader that closes the pipe early ends afpq quietly, without a panic (SIGPIPE handling).
/// `afpq run` on the 500 bundled images prints about 72 KB, more than a pipe buffer holds.
#[cfg(unix)]
#[test]
fn a_closed_pipe_is_not_a_panic() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let assets = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let mut images: Vec<String> = std::fs::read_dir(assets.join("images/cifar10-test-500"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|d| d.is_dir())
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|f| f.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".jpg"))
        .collect();
    images.sort();
    assert_eq!(images.len(), 500);
    let mut child = Command::new(env!("CARGO_BIN_EXE_afpq"))
        .arg("run")
        .arg(assets.join("models/resnet8_cifar10.onnx"))
        .arg("--card")
        .arg(assets.join("models/resnet8_cifar10.json"))
        .args(&images)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one byte, then close our end while afpq still has output to write.
    let mut out = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    out.read_exact(&mut b).unwrap();
    drop(out);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
}

//! Every command that prints results: `--json` gives one JSON value on stdout, and `--quiet`
//! leaves stderr empty (also for the commands whose notes and progress go to stderr).

mod common;
use common::*;

/// One short run of every command, with `--json` or `--quiet` appended.
fn runs(dir: &std::path::Path, plan: &str) -> Vec<(&'static str, Vec<String>)> {
    let d = |s: &str| dir.join(s).display().to_string();
    let (card, model) = (card(), model());
    let img = image("cat", "0003.jpg");
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        ("levels", v(&["levels", "E2M3"])),
        ("inspect onnx", v(&["inspect", &model])),
        ("inspect afp", v(&["inspect", plan])),
        ("eval", v(&["eval", plan, "--card", &card, "--limit", "16"])),
        ("run", v(&["run", plan, &img, "--card", &card])),
        (
            "bench",
            v(&[
                "bench",
                &model,
                "--batch",
                "1",
                "--threads",
                "1",
                "--seconds",
                "0.05",
                "--warmup",
                "1",
            ]),
        ),
        (
            "quantize",
            v(&[
                "quantize",
                "--card",
                &card,
                "-o",
                &d("q.afp"),
                "--bits",
                "6",
                "--calib",
                "8",
            ]),
        ),
        (
            "sweep",
            v(&[
                "sweep",
                "--card",
                &card,
                "--bits",
                "4",
                "--formats",
                "afp",
                "--limit",
                "16",
                "--calib",
                "8",
                "-o",
                &d("sweep"),
            ]),
        ),
        ("energy", v(&["energy", plan])),
        // The plan quantizes layer inputs: --weights-only leaves them f32 with a note each.
        (
            "export",
            v(&["export", plan, "-o", &d("m.onnx"), "--weights-only"]),
        ),
        ("report", v(&["report", plan, "-o", &d("report")])),
        (
            "demo",
            v(&[
                "demo",
                "-o",
                &d("demo"),
                "--limit",
                "16",
                "--no-sweep",
                "--bench-seconds",
                "0.05",
            ]),
        ),
    ]
}

#[test]
fn json_parses_for_every_command() {
    let dir = tmp("json");
    let plan = quantize(&dir);
    for (name, mut args) in runs(&dir, &plan) {
        args.push("--json".into());
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let v = json(&a);
        assert!(
            v.is_object() || v.is_array(),
            "{name}: {v} is not an object or array"
        );
        assert!(v.as_object().is_none_or(|o| !o.is_empty()), "{name}: empty");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn quiet_prints_nothing_on_stderr() {
    let dir = tmp("quiet");
    let plan = quantize(&dir);
    // Without --quiet, these print notes or rows on stderr (so the test below can fail).
    let all = runs(&dir, &plan);
    for (name, args) in all.iter().filter(|(n, _)| ["export", "sweep"].contains(n)) {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = ok(&a);
        assert!(!o.stderr.is_empty(), "{name} printed nothing on stderr");
    }
    for (name, mut args) in all {
        args.push("--quiet".into());
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = ok(&a);
        assert!(
            o.stderr.is_empty(),
            "{name} --quiet: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.stdout.is_empty(), "{name} --quiet printed no results");
    }
    std::fs::remove_dir_all(&dir).ok();
}

//! A session's pool: runs on 1, 2 and 4 threads (4 is more than this machine may have, so
//! the helper threads kept awake during a run share cores with the graph's thread) give the
//! same bits, run after run.

use afp_engine::{Model, Session};
use std::path::PathBuf;

#[test]
fn runs_on_one_two_and_four_threads_agree() {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/resnet8_cifar10.onnx");
    let m = Model::load(&p).unwrap();
    let x: Vec<f32> = (0..4 * 3 * 32 * 32)
        .map(|i| ((i * 7919) % 255) as f32 / 64.0 - 2.0)
        .collect();
    let bits = |v: &[Vec<f32>]| -> Vec<u32> { v[0].iter().map(|x| x.to_bits()).collect() };
    let want = bits(
        &Session::new(m.lower(4).unwrap(), 1)
            .unwrap()
            .run(&[&x])
            .unwrap(),
    );
    for threads in [2, 4] {
        let mut s = Session::new(m.lower(4).unwrap(), threads).unwrap();
        for run in 0..20 {
            let got = bits(&s.run(&[&x]).unwrap());
            assert_eq!(got, want, "{threads} threads, run {run}");
        }
        // A partial run, as the sensitivity measurement makes them, then the rest.
        let n = s.graph().nodes.len();
        s.set_inputs(&[&x]).unwrap();
        s.run_nodes(0..n / 2).unwrap();
        s.run_nodes(n / 2..n).unwrap();
        assert_eq!(bits(&s.outputs()), want, "{threads} threads, in two parts");
    }
    // The input matters (the comparison can fail).
    let other: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
    let mut s = Session::new(m.lower(4).unwrap(), 2).unwrap();
    assert_ne!(bits(&s.run(&[&other]).unwrap()), want);
}

/// A panic during a run on several threads reaches the caller (the helper threads kept
/// awake for the run stop), and the session can run again.
#[test]
fn a_panic_during_a_run_on_two_threads_reaches_the_caller() {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/resnet8_cifar10.onnx");
    let m = Model::load(&p).unwrap();
    let x: Vec<f32> = (0..3 * 32 * 32).map(|i| (i % 7) as f32 / 7.0).collect();
    let mut s = Session::new(m.lower(1).unwrap(), 2).unwrap();
    let want = s.run(&[&x]).unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        s.run_observed(&[&x], &mut |k, _, _| assert!(k < 3, "stop at node {k}"))
    }));
    assert!(caught.is_err());
    assert_eq!(s.run(&[&x]).unwrap(), want);
}

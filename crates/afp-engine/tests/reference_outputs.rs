//! The FP32 engine against ONNX Runtime: every model of the shared data bundle on its
//! reference inputs (`reference/<model>_input<K>.npy`), relative error <= 1e-4 of max |output|.
//! Needs AFPQ_SHARED_DATA (skipped, with a message, when unset; CI sets it).

use afp_engine::Model;
use std::path::PathBuf;

fn shared() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("AFPQ_SHARED_DATA") else {
        eprintln!("skipped: AFPQ_SHARED_DATA is not set");
        return None;
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("models").is_dir(),
        "AFPQ_SHARED_DATA={} has no models/ folder",
        dir.display()
    );
    Some(dir)
}

fn check(model: &str, input: &str, output: &str, threads: usize) {
    let Some(dir) = shared() else { return };
    let m = Model::load(&dir.join("models").join(format!("{model}.onnx"))).unwrap();
    let x = afp_eval::read_npy(dir.join("reference").join(input)).unwrap();
    let want = afp_eval::read_npy(dir.join("reference").join(output)).unwrap();
    let batch = x.shape[0];
    let mut s = m.session(batch, threads).unwrap();
    let got = s.run(&[&x.data]).unwrap().remove(0);
    assert_eq!(got.len(), want.data.len(), "{model}: output size");
    let scale = want.data.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let err = got
        .iter()
        .zip(&want.data)
        .fold(0f32, |a, (&g, &w)| a.max((g - w).abs()));
    println!("{model} ({input}, {threads} threads): max |err| = {err:e}, max |ref| = {scale:e}, relative {:e}", err / scale);
    assert!(
        err <= 1e-4 * scale,
        "{model}: max error {err:e} exceeds 1e-4 x {scale:e}"
    );
}

#[test]
fn resnet8_cifar10() {
    check(
        "resnet8_cifar10",
        "resnet8_cifar10_input16.npy",
        "resnet8_cifar10_output16.npy",
        2,
    );
}

#[test]
fn resnet50() {
    check("resnet50", "resnet50_input8.npy", "resnet50_output8.npy", 2);
}

#[test]
fn efficientnet_lite0() {
    check(
        "efficientnet_lite0",
        "efficientnet_lite0_input8.npy",
        "efficientnet_lite0_output8.npy",
        2,
    );
}

#[test]
fn mobilenet_v2_random() {
    check(
        "mobilenet_v2_random",
        "mobilenet_v2_random_input2.npy",
        "mobilenet_v2_random_output2.npy",
        1,
    );
    check(
        "mobilenet_v2_random",
        "mobilenet_v2_random_input4.npy",
        "mobilenet_v2_random_output4.npy",
        2,
    );
}

//! Bad models give clear errors before any work, never panics.

use afp_engine::{EngineError, Model};
use std::path::PathBuf;

fn resnet8() -> afp_onnx::ModelProto {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/resnet8_cifar10.onnx");
    afp_onnx::read_model(&p).unwrap()
}

#[test]
fn unsupported_operators_are_all_listed_with_their_nodes() {
    let mut m = resnet8();
    let g = m.graph.as_mut().unwrap();
    g.node[0].op_type = Some("FancyConv".into());
    g.node[3].op_type = Some("FancyConv".into());
    g.node[5].op_type = Some("Gelu".into());
    g.node[5].domain = Some("com.example".into());
    let names: Vec<String> = [0, 3, 5]
        .iter()
        .map(|&i| g.node[i].name().to_string())
        .collect();
    let err = Model::from_proto(m).unwrap_err();
    assert!(matches!(err, EngineError::Unsupported(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("FancyConv") && msg.contains("com.example::Gelu"),
        "{msg}"
    );
    for n in names {
        assert!(msg.contains(&n), "{msg} should name {n}");
    }
}

#[test]
fn broken_graphs_are_errors() {
    // A node reading a value nobody produces.
    let mut m = resnet8();
    m.graph.as_mut().unwrap().node[2].input[0] = "nowhere".into();
    let err = Model::from_proto(m)
        .unwrap()
        .lower(1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nowhere"), "{err}");
    // A weight of the wrong shape.
    let mut m = resnet8();
    let g = m.graph.as_mut().unwrap();
    let conv = g.node.iter().position(|n| n.op_type() == "Conv").unwrap();
    let wname = g.node[conv].input[1].clone();
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == wname)
        .unwrap();
    t.dims = vec![t.dims.iter().product()];
    let err = Model::from_proto(m)
        .unwrap()
        .lower(2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("weight shape") || err.contains("do not match"),
        "{err}"
    );
    // Batch 0.
    assert!(Model::from_proto(resnet8()).unwrap().lower(0).is_err());
}

#[test]
fn wrong_input_size_is_an_error() {
    let m = Model::from_proto(resnet8()).unwrap();
    let mut s = m.session(2, 1).unwrap();
    let err = s.run(&[&[0f32; 10]]).unwrap_err().to_string();
    assert!(err.contains("input_1") && err.contains("6144"), "{err}");
}

#[test]
fn passes_fold_and_fuse_without_changing_results() {
    let m = Model::from_proto(resnet8()).unwrap();
    let raw = m.lower_raw(3).unwrap();
    let opt = m.lower(3).unwrap();
    assert!(
        opt.nodes.len() < raw.nodes.len(),
        "{} vs {}",
        opt.nodes.len(),
        raw.nodes.len()
    );
    let x: Vec<f32> = (0..3 * 3 * 32 * 32)
        .map(|i| ((i * 7919) % 256) as f32)
        .collect();
    let a = afp_engine::Session::new(raw, 1)
        .unwrap()
        .run(&[&x])
        .unwrap();
    let b = afp_engine::Session::new(opt, 2)
        .unwrap()
        .run(&[&x])
        .unwrap();
    let err = a[0]
        .iter()
        .zip(&b[0])
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(err < 1e-5, "{err}");
}

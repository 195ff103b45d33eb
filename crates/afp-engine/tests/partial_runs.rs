//! A run can stop after any node and go on from there in another session over a graph with
//! different constants: the sensitivity measurement runs only the nodes after the layer it
//! perturbs, and needs the same bits as a whole run.

use afp_engine::{Model, Session};
use std::path::PathBuf;

#[test]
fn a_run_continued_in_another_session_equals_a_whole_run() {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/models/resnet8_cifar10.onnx");
    let m = Model::load(&p).unwrap();
    let g = m.lower(2).unwrap();
    let x: Vec<f32> = (0..2 * 3 * 32 * 32)
        .map(|i| ((i * 7919) % 255) as f32 / 64.0 - 2.0)
        .collect();
    let n = g.nodes.len();
    // Perturb the weights of a node in the middle.
    let k = (n / 2..n)
        .find(|&k| g.nodes[k].op.name() == "Conv")
        .expect("a Conv in the second half");
    let wid = g.nodes[k].inputs[1];
    let mut perturbed = g.clone();
    let w = perturbed.values[wid].konst.as_mut().unwrap();
    if let afp_engine::tensor::ConstData::F32(d) = &mut w.data {
        d.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += 0.01 * ((i % 5) as f32 - 2.0));
    } else {
        panic!("f32 weights");
    }
    let whole = Session::new(perturbed.clone(), 2)
        .unwrap()
        .run(&[&x])
        .unwrap();

    let mut base = Session::new(g.clone(), 2).unwrap();
    base.set_inputs(&[&x]).unwrap();
    base.run_nodes(0..k).unwrap();
    let mut rest = Session::new(perturbed, 2).unwrap();
    rest.copy_buffers_from(&base).unwrap();
    rest.run_nodes(k..n).unwrap();
    let continued = rest.outputs();
    assert_eq!(
        continued[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        whole[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    // The unperturbed graph's output differs (the test can tell the two apart).
    let plain = Session::new(g.clone(), 2).unwrap().run(&[&x]).unwrap();
    assert_ne!(plain[0], whole[0]);

    // Buffers of a graph of another batch size do not fit.
    let other = Session::new(m.lower(1).unwrap(), 1).unwrap();
    let mut s = Session::new(g, 1).unwrap();
    assert!(s.copy_buffers_from(&other).is_err());
    // Nodes past the end are an error, not a panic.
    assert!(s.run_nodes(0..n + 1).is_err());
}

/// A 64 -> 64 3x3 convolution on 16x16 (a layer Winograd's F(2x2, 3x3) takes) followed by
/// a Relu, as an ONNX model.
fn conv3x3_model(weight: &[f32]) -> afp_onnx::ModelProto {
    use afp_onnx::onnx::tensor_shape_proto::{dimension, Dimension};
    use afp_onnx::onnx::type_proto;
    use afp_onnx::*;
    let vi = |name: &str, dims: &[i64]| ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ints = |name: &str, v: &[i64]| AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    };
    let conv = NodeProto {
        input: vec!["x".into(), "w".into()],
        output: vec!["y".into()],
        name: Some("conv".into()),
        op_type: Some("Conv".into()),
        attribute: vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
        ..Default::default()
    };
    let relu = NodeProto {
        input: vec!["y".into()],
        output: vec!["z".into()],
        name: Some("relu".into()),
        op_type: Some("Relu".into()),
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: vec![conv, relu],
            initializer: vec![f32_tensor("w", &[64, 64, 3, 3], weight)],
            input: vec![vi("x", &[1, 64, 16, 16])],
            output: vec![vi("z", &[1, 64, 16, 16])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Swapping a constant re-derives what the session made from it: a 3x3 layer's Winograd
/// weights are transformed again, so the swapped session equals a session built with the new
/// weights, and swapping back restores the first output.
#[test]
fn swapping_weights_redoes_their_winograd_transform() {
    let w1: Vec<f32> = (0..64 * 64 * 9)
        .map(|i| ((i * 7919) % 101) as f32 / 400.0 - 0.12)
        .collect();
    let w2: Vec<f32> = w1.iter().map(|v| -0.5 * v + 0.01).collect();
    let x: Vec<f32> = (0..64 * 16 * 16)
        .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let session = |w: &[f32]| {
        let g = Model::from_proto(conv3x3_model(w))
            .unwrap()
            .lower(1)
            .unwrap();
        Session::new(g, 2).unwrap()
    };
    let mut s = session(&w1);
    let first = s.run(&[&x]).unwrap();
    let want = session(&w2).run(&[&x]).unwrap();
    assert_ne!(first, want);
    let wid = s.graph().nodes[0].inputs[1];
    let old = s.swap_const(wid, w2.clone()).unwrap();
    assert_eq!(s.run(&[&x]).unwrap(), want);
    s.swap_const(wid, old).unwrap();
    assert_eq!(s.run(&[&x]).unwrap(), first);
    // The convolution matches the direct sum (the layer did go through the transform when
    // the machine has AVX2; either way the result is the convolution's).
    let mut worst = 0f32;
    for o in 0..64 {
        for y in 0..16 {
            for xx in 0..16 {
                let mut acc = 0f64;
                for c in 0..64 {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let (iy, ix) = (y + ky, xx + kx);
                            if (1..=16).contains(&iy) && (1..=16).contains(&ix) {
                                acc += x[(c * 16 + iy - 1) * 16 + ix - 1] as f64
                                    * w1[((o * 64 + c) * 3 + ky) * 3 + kx] as f64;
                            }
                        }
                    }
                }
                let at = (o * 16 + y) * 16 + xx;
                worst = worst.max((first[0][at] - (acc as f32).max(0.0)).abs());
            }
        }
    }
    assert!(worst < 2e-5, "max error {worst:e}");
}

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

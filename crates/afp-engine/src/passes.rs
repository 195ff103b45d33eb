//! Graph rewrites after lowering: zero Pad folded into the following Conv, BatchNormalization
//! folded into the preceding Conv or Gemm, activation functions fused into their producer.

use crate::error::Result;
use crate::ir::{Activation, Graph, Node, Op, PadMode, ValueId};
use crate::tensor::Const;

/// Which rewrites [`optimize_with`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassOptions {
    /// Fold BatchNormalization into the preceding Conv/Gemm weights. Quantizers may keep it
    /// apart, so the per-channel BN scale stays out of the quantized weights (it then runs as a
    /// per-channel affine op, which a packed kernel's epilogue can absorb).
    pub fold_batchnorm: bool,
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            fold_batchnorm: true,
        }
    }
}

pub fn optimize(g: &mut Graph) -> Result<()> {
    optimize_with(g, PassOptions::default())
}

pub fn optimize_with(g: &mut Graph, o: PassOptions) -> Result<()> {
    fold_pad_into_conv(g);
    if o.fold_batchnorm {
        fold_batchnorm(g);
    }
    fuse_activations(g);
    Ok(())
}

/// Removes nodes marked `None`.
fn compact(g: &mut Graph, nodes: Vec<Option<Node>>) {
    g.nodes = nodes.into_iter().flatten().collect();
}

/// The single consumer of a value read exactly once and not a graph output.
fn sole_consumer(g: &Graph, uses: &[usize], v: ValueId) -> Option<usize> {
    if uses[v] != 1 || g.outputs.contains(&v) {
        return None;
    }
    g.nodes.iter().position(|n| n.inputs.contains(&v))
}

pub fn fold_pad_into_conv(g: &mut Graph) {
    let uses = g.use_counts();
    let mut nodes: Vec<Option<Node>> = g.nodes.iter().cloned().map(Some).collect();
    for p in 0..g.nodes.len() {
        let Op::Pad { pads, mode, value } = &g.nodes[p].op else {
            continue;
        };
        let r = pads.len() / 2;
        if *mode != PadMode::Constant
            || *value != 0.0
            || r != 4
            || pads[0] + pads[1] + pads[4] + pads[5] != 0
        {
            continue;
        }
        let Some(c) = sole_consumer(g, &uses, g.nodes[p].output) else {
            continue;
        };
        let Some(Node {
            op: Op::Conv { conv, .. },
            inputs,
            ..
        }) = nodes[c].as_mut()
        else {
            continue;
        };
        if inputs[0] != g.nodes[p].output {
            continue;
        }
        conv.pads[0] += pads[2];
        conv.pads[1] += pads[3];
        conv.pads[2] += pads[6];
        conv.pads[3] += pads[7];
        inputs[0] = g.nodes[p].inputs[0];
        nodes[p] = None;
    }
    compact(g, nodes);
}

fn add_const(g: &mut Graph, name: String, c: Const) -> ValueId {
    g.values.push(crate::ir::Value {
        name,
        shape: c.shape.clone(),
        konst: Some(c),
    });
    g.values.len() - 1
}

pub fn fold_batchnorm(g: &mut Graph) {
    let uses = g.use_counts();
    let mut nodes: Vec<Option<Node>> = g.nodes.iter().cloned().map(Some).collect();
    for a in 0..g.nodes.len() {
        let Op::ChannelAffine {
            act: Activation::None,
        } = g.nodes[a].op
        else {
            continue;
        };
        let x = g.nodes[a].inputs[0];
        let (Some(scale), Some(shift)) = (
            g.const_f32(g.nodes[a].inputs[1]),
            g.const_f32(g.nodes[a].inputs[2]),
        ) else {
            continue;
        };
        let (scale, shift) = (scale.to_vec(), shift.to_vec());
        let Some(p) = nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.output == x))
        else {
            continue;
        };
        if sole_consumer(g, &uses, x) != Some(a) {
            continue;
        }
        let producer = nodes[p].clone().expect("found above");
        let c = scale.len();
        let folded = match &producer.op {
            Op::Conv {
                act: Activation::None,
                ..
            } => {
                let Some(w) = g.const_f32(producer.inputs[1]) else {
                    continue;
                };
                let per = w.len() / c;
                let w: Vec<f32> = w
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| v * scale[i / per])
                    .collect();
                let b: Vec<f32> = match producer.inputs.get(2) {
                    Some(&b) => match g.const_f32(b) {
                        Some(b) => b
                            .iter()
                            .zip(&scale)
                            .zip(&shift)
                            .map(|((&b, &s), &t)| b * s + t)
                            .collect(),
                        None => continue,
                    },
                    None => shift.clone(),
                };
                let wshape = g.values[producer.inputs[1]].shape.clone();
                let wid = add_const(g, format!("{}:w_bn", producer.name), Const::f32(wshape, w));
                let bid = add_const(g, format!("{}:b_bn", producer.name), Const::f32(vec![c], b));
                let mut n = producer.clone();
                n.inputs = vec![n.inputs[0], wid, bid];
                n
            }
            Op::Gemm {
                trans_b,
                beta,
                act: Activation::None,
                ..
            } => {
                let Some(w) = g.const_f32(producer.inputs[1]) else {
                    continue;
                };
                let ws = g.values[producer.inputs[1]].shape.clone();
                let n_out = if *trans_b { ws[0] } else { ws[1] };
                if n_out != c {
                    continue;
                }
                let w: Vec<f32> = w
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| v * scale[if *trans_b { i / ws[1] } else { i % ws[1] }])
                    .collect();
                // Only a bias per output column ([N], [1, N]) or a scalar folds; [M, 1] or
                // [M, N] vary along rows.
                let cb: Vec<f32> = match producer.inputs.get(2) {
                    None => vec![0.0; c],
                    Some(&b) => {
                        let bs = &g.values[b].shape;
                        let per_column = bs.iter().product::<usize>() == c
                            && bs.last() == Some(&c)
                            && bs.len() <= 2;
                        match g.const_f32(b) {
                            Some(v) if v.len() == 1 => vec![v[0]; c],
                            Some(v) if per_column => v.to_vec(),
                            _ => continue,
                        }
                    }
                };
                let b: Vec<f32> = (0..c).map(|i| beta * cb[i] * scale[i] + shift[i]).collect();
                let wid = add_const(g, format!("{}:w_bn", producer.name), Const::f32(ws, w));
                let bid = add_const(g, format!("{}:b_bn", producer.name), Const::f32(vec![c], b));
                let mut n = producer.clone();
                if let Op::Gemm { beta, .. } = &mut n.op {
                    *beta = 1.0;
                }
                n.inputs = vec![n.inputs[0], wid, bid];
                n
            }
            _ => continue,
        };
        let mut folded = folded;
        folded.output = g.nodes[a].output;
        nodes[p] = Some(folded);
        nodes[a] = None;
    }
    compact(g, nodes);
}

pub fn fuse_activations(g: &mut Graph) {
    let uses = g.use_counts();
    let mut nodes: Vec<Option<Node>> = g.nodes.iter().cloned().map(Some).collect();
    for u in 0..g.nodes.len() {
        let Op::Unary(act) = g.nodes[u].op else {
            continue;
        };
        let x = g.nodes[u].inputs[0];
        if sole_consumer(g, &uses, x) != Some(u) {
            continue;
        }
        let Some(p) = nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.output == x))
        else {
            continue;
        };
        let Some(producer) = nodes[p].as_mut() else {
            continue;
        };
        match producer.op.act_mut() {
            Some(a) if *a == Activation::None => *a = act,
            _ => continue,
        }
        producer.output = g.nodes[u].output;
        nodes[u] = None;
    }
    compact(g, nodes);
}

//! Graph rewrites after lowering: zero Pad folded into the following Conv (or MaxPool, when
//! padding cannot win the max), BatchNormalization folded into the preceding Conv or Gemm,
//! activation functions fused into their producer.

use crate::error::Result;
use crate::ir::{Activation, BinOp, Graph, Node, Op, PadMode, ValueId};
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
    // After activation fusion: a producer's fused clamp bounds what the Pad sees.
    fold_pad_into_maxpool(g);
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

/// A constant Pad of the two spatial axes whose only reader is a MaxPool becomes the pool's
/// own padding when the pad value can never exceed a real input: it is -inf, or the input's
/// producer clamps below at a bound >= the value (a Relu output padded with 0, as Caffe-style
/// ResNets do before their first pool). Each window must keep at least one real input, and
/// `ceil_mode` pools are left alone (their last-window rule depends on where padding starts).
pub fn fold_pad_into_maxpool(g: &mut Graph) {
    let uses = g.use_counts();
    let mut nodes: Vec<Option<Node>> = g.nodes.iter().cloned().map(Some).collect();
    for p in 0..g.nodes.len() {
        let Op::Pad { pads, mode, value } = &g.nodes[p].op else {
            continue;
        };
        if *mode != PadMode::Constant
            || pads.len() != 8
            || pads[0] + pads[1] + pads[4] + pads[5] != 0
        {
            continue;
        }
        let x = g.nodes[p].inputs[0];
        let floor = g
            .nodes
            .iter()
            .find(|n| n.output == x)
            .and_then(|n| match n.op.act() {
                Some(Activation::Relu) => Some(0.0),
                Some(Activation::Clip { min, .. }) => Some(min),
                _ => None,
            });
        let never_wins = *value == f32::NEG_INFINITY || floor.is_some_and(|lo| *value <= lo);
        if !never_wins {
            continue;
        }
        let Some(c) = sole_consumer(g, &uses, g.nodes[p].output) else {
            continue;
        };
        let Some(Node {
            op: Op::MaxPool(pool),
            inputs,
            ..
        }) = nodes[c].as_mut()
        else {
            continue;
        };
        let mut merged = pool.clone();
        merged.pads[0] += pads[2];
        merged.pads[1] += pads[3];
        merged.pads[2] += pads[6];
        merged.pads[3] += pads[7];
        let extent = [
            (pool.kh - 1) * pool.dilation[0] + 1,
            (pool.kw - 1) * pool.dilation[1] + 1,
        ];
        let in_window = (0..4).all(|i| merged.pads[i] < extent[i % 2]);
        if pool.ceil_mode || !in_window {
            continue;
        }
        *pool = merged;
        inputs[0] = x;
        nodes[p] = None;
    }
    compact(g, nodes);
}

/// Inference only (not in [`optimize_with`]): a two-input Sum or Add of tensors shaped as its
/// output, one of which comes from a Conv or QConv without activation and is read nowhere
/// else, becomes that convolution with the other tensor added in its epilogue and the Add's
/// activation (None, Relu or Clip) applied after it: the residual connection of a ResNet
/// block without its separate pass over memory. The fused node runs where the Add ran (both
/// of its inputs exist there). Calibration observes convolution outputs, so quantizers lower
/// without this pass.
pub fn fuse_residual_add(g: &mut Graph) {
    let uses = g.use_counts();
    let mut nodes: Vec<Option<Node>> = g.nodes.iter().cloned().map(Some).collect();
    for u in 0..g.nodes.len() {
        let add = &g.nodes[u];
        let act = match add.op {
            Op::Sum { act } if add.inputs.len() == 2 => act,
            Op::Binary {
                op: BinOp::Add,
                act,
            } => act,
            _ => continue,
        };
        if act.clamp_bounds().is_none() {
            continue;
        }
        let shape = &g.values[add.output].shape;
        if add.inputs.iter().any(|&v| &g.values[v].shape != shape) {
            continue;
        }
        // The later producer first: the fused node then moves the least.
        let mut cands: Vec<(usize, usize)> = (0..2)
            .filter_map(|i| {
                let p = g.nodes.iter().position(|n| n.output == add.inputs[i])?;
                Some((p, i))
            })
            .collect();
        cands.sort_by_key(|&(p, _)| std::cmp::Reverse(p));
        for (p, i) in cands {
            if sole_consumer(g, &uses, add.inputs[i]) != Some(u) {
                continue;
            }
            let Some(conv) = nodes[p].as_ref() else {
                continue;
            };
            let residual = add.inputs[1 - i];
            let (op, inputs) = match &conv.op {
                Op::Conv {
                    conv: c,
                    act: Activation::None,
                } => {
                    let mut inputs = vec![conv.inputs[0], residual];
                    inputs.extend_from_slice(&conv.inputs[1..]);
                    (
                        Op::ConvAdd {
                            conv: c.clone(),
                            act,
                        },
                        inputs,
                    )
                }
                Op::QConv(q) if q.act() == Activation::None => (
                    Op::QConvAdd { q: q.clone(), act },
                    vec![conv.inputs[0], residual],
                ),
                _ => continue,
            };
            nodes[u] = Some(Node {
                name: conv.name.clone(),
                op,
                inputs,
                output: add.output,
            });
            nodes[p] = None;
            break;
        }
    }
    compact(g, nodes);
}

/// Inference only, after [`fuse_residual_add`]: an integer convolution whose output is read
/// by one other integer convolution alone, as its input, stores that output as the reader's
/// u8 input codes (channel quads, in the bytes of the f32 tensor's buffer), and the reader
/// takes them as they are: the encoding of the next layer's input fused into the epilogue.
/// The same bits reach the reader; the tensor in between holds codes, not f32 values, so
/// nothing else may read it (a graph output or a second reader keeps it f32).
pub fn fuse_quad_handover(g: &mut Graph) {
    let uses = g.use_counts();
    for p in 0..g.nodes.len() {
        let v = g.nodes[p].output;
        let Some(c) = sole_consumer(g, &uses, v) else {
            continue;
        };
        if g.nodes[c].inputs.iter().position(|&x| x == v) != Some(0) {
            continue;
        }
        let (Op::QConv(reader) | Op::QConvAdd { q: reader, .. }) = &g.nodes[c].op else {
            continue;
        };
        let Some((enc, zero)) = reader.quads_input() else {
            continue;
        };
        if !afp_kernels::quads_fit(&g.values[v].shape) {
            continue;
        }
        let writer = with_qconv(&g.nodes[p].op, |q| q.writing_quads(enc, zero));
        let reader = with_qconv(&g.nodes[c].op, afp_kernels::QConv::reading_quads);
        if let (Some(writer), Some(reader)) = (writer, reader) {
            g.nodes[p].op = writer;
            g.nodes[c].op = reader;
        }
    }
}

/// Inference only, after [`fuse_quad_handover`]: an integer convolution whose f32 output has
/// other readers too (a residual Add, a graph output) and is the input of integer
/// convolutions taking the same u8 codes (ResNet's block outputs: the next block's first
/// convolution and, in the first block of a stage, its shortcut), stores that output as f32
/// and also, after it in the same buffer, as those readers' channel quads; the readers take
/// the codes. Their encoding moves into the producer's epilogue, as with a sole reader. The
/// same bits reach every reader (the executor hands f32 readers the values, code readers
/// the codes: `exec::buffer_lens`).
pub fn fuse_codes_too(g: &mut Graph) {
    for p in 0..g.nodes.len() {
        let v = g.nodes[p].output;
        let (Op::QConv(q) | Op::QConvAdd { q, .. }) = &g.nodes[p].op else {
            continue;
        };
        if q.writes_quads() || q.writes_codes_too() || !afp_kernels::quads_fit(&g.values[v].shape) {
            continue;
        }
        // Readers taking `v` as their input (and nowhere else), with the first one's codes.
        let mut codes = None;
        let mut readers = Vec::new();
        for (c, n) in g.nodes.iter().enumerate() {
            if n.inputs.first() != Some(&v) || n.inputs[1..].contains(&v) {
                continue;
            }
            let (Op::QConv(r) | Op::QConvAdd { q: r, .. }) = &n.op else {
                continue;
            };
            let Some(ek) = r.quads_input() else { continue };
            if codes.is_none_or(|c| c == ek) {
                codes = Some(ek);
                readers.push(c);
            }
        }
        let Some((enc, zero)) = codes else { continue };
        let Some(writer) = with_qconv(&g.nodes[p].op, |q| q.writing_codes_too(enc, zero)) else {
            continue;
        };
        g.nodes[p].op = writer;
        for c in readers {
            if let Some(r) = with_qconv(&g.nodes[c].op, afp_kernels::QConv::reading_quads) {
                g.nodes[c].op = r;
            }
        }
    }
}

/// `op` (a QConv or QConv+Add) with its convolution replaced by `f` of it; `None` for other
/// ops or when `f` fails.
fn with_qconv(
    op: &Op,
    f: impl FnOnce(&afp_kernels::QConv) -> std::result::Result<afp_kernels::QConv, String>,
) -> Option<Op> {
    use std::sync::Arc;
    match op {
        Op::QConv(q) => f(q).ok().map(|q| Op::QConv(Arc::new(q))),
        Op::QConvAdd { q, act } => f(q).ok().map(|q| Op::QConvAdd {
            q: Arc::new(q),
            act: *act,
        }),
        _ => None,
    }
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

//! The packed engine: a plan's layers computed on AFP integers from their codes (DESIGN.md
//! §1, the integer view), with no de-quantized weight copy. [`pack`] turns the codes into the
//! kernels' integer layout once; [`apply_packed`] puts the packed layers into a graph lowered
//! for any batch size.

use crate::plan::{FormatName, LayerPlan, QuantizedModel};
use afp_engine::ir::{Graph, Op};
use afp_format::{Format, Grid, Lut, ZeroMode};
use afp_kernels::{ActEncoder, CodedWeights, LookupConv, LookupGemm, QConv, QGemm};
use std::sync::Arc;

/// Packed layers by node name, ready to replace the f32 nodes of a lowered graph.
pub struct PackedModel {
    layers: Vec<PackedLayer>,
}

/// One planned node's replacement.
struct PackedLayer {
    node: String,
    op: Op,
    /// A following BatchNormalization node fused into the op's epilogue.
    fused_affine: Option<String>,
    /// The grid the input is rounded to first (lookup layers; the integer kernels encode
    /// their input themselves).
    input_grid: Option<afp_format::Grid>,
}

/// One packed layer, for reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PackedLayerInfo {
    pub node: String,
    pub kernel: &'static str,
    pub weight_bytes: usize,
}

impl PackedModel {
    pub fn layers(&self) -> Vec<PackedLayerInfo> {
        self.layers
            .iter()
            .map(|l| {
                let (kernel, weight_bytes) = match &l.op {
                    Op::QConv(q) => (q.kernel_name(), q.weight_bytes()),
                    Op::QGemm(q) => (q.kernel_name(), q.weight_bytes()),
                    Op::LookupConv(q) => (q.kernel_name(), q.weight_bytes()),
                    Op::LookupGemm(q) => (q.kernel_name(), q.weight_bytes()),
                    _ => ("", 0),
                };
                PackedLayerInfo {
                    node: l.node.clone(),
                    kernel,
                    weight_bytes,
                }
            })
            .collect()
    }
}

/// The number of weight groups (1 per tensor or 1 per output channel), after checking the
/// codes and the plan's offsets or scales against it.
fn channel_groups(
    lp: &LayerPlan,
    codes: &[u8],
    channels: usize,
    k: usize,
) -> Result<usize, String> {
    if codes.len() != channels * k {
        return Err(format!(
            "{} codes for {channels} x {k} weights",
            codes.len()
        ));
    }
    let groups = match lp.weight.granularity.as_str() {
        "tensor" => 1,
        "channel" => channels,
        g => {
            return Err(format!(
                "granularity {g:?}: the packed engine needs one offset or scale per output channel or tensor"
            ))
        }
    };
    match lp.weight.format.name {
        FormatName::Afp { .. } if lp.weight.offsets.len() != groups => Err(format!(
            "{} offsets for {groups} groups",
            lp.weight.offsets.len()
        )),
        FormatName::Int { bits }
            if !(2..=8).contains(&bits) || lp.weight.scales.len() != groups =>
        {
            Err(format!(
                "INT{bits} with {} scales for {groups} groups",
                lp.weight.scales.len()
            ))
        }
        _ => Ok(groups),
    }
}

/// The weights of one layer as integers `[channels, reduction]`, their largest `|n|`, and the
/// factor of each output channel's integer sum before the activation unit.
fn weight_integers(
    lp: &LayerPlan,
    codes: &[u8],
    channels: usize,
    k: usize,
) -> Result<(Vec<i32>, u32, Vec<f64>), String> {
    let groups = channel_groups(lp, codes, channels, k)?;
    let per_group = |r: usize| if groups == 1 { 0 } else { r };
    match lp.weight.format.name {
        FormatName::Afp { .. } => {
            let f = lp.weight.format.format().ok_or("invalid weight format")?;
            if f.zero_mode() != ZeroMode::Subnormal {
                return Err("the packed engine needs the Subnormal zero mode".into());
            }
            let bound = lp.weight.format.int_bound().unwrap_or(f64::INFINITY);
            if bound > i32::MAX as f64 {
                return Err(format!("{} has integers beyond i32", f.name()));
            }
            let lut: Vec<i32> = (0..f.code_count())
                .map(|c| f.integer(c as u8).map(|v| v as i32).unwrap_or(0))
                .collect();
            let ints = codes
                .iter()
                .map(|&c| lut[c as usize & (f.code_count() - 1)])
                .collect();
            // A real scale (`--scale real`) joins the power of two in the epilogue's factor.
            let real = |g: usize| lp.weight.scales.get(g).map_or(1.0, |&s| s as f64);
            let scale = (0..channels)
                .map(|r| {
                    let g = per_group(r);
                    2f64.powi(lp.weight.offsets[g] - f.man_bits() as i32) * real(g)
                })
                .collect();
            Ok((ints, bound as u32, scale))
        }
        FormatName::Int { bits } => {
            let shift = 32 - bits;
            let ints = codes
                .iter()
                .map(|&c| ((c as i32) << shift) >> shift)
                .collect();
            let scale = (0..channels)
                .map(|r| lp.weight.scales[per_group(r)] as f64)
                .collect();
            let bound = lp.weight.format.int_bound().unwrap_or(0.0);
            Ok((ints, bound as u32, scale))
        }
    }
}

/// Packs every planned layer of `g` (the graph the plan applies to, lowered for any batch).
pub fn pack(g: &Graph, q: &QuantizedModel) -> Result<PackedModel, String> {
    if q.codes.len() != q.plan.layers.len() {
        return Err(format!(
            "{} code tensors for {} planned layers",
            q.codes.len(),
            q.plan.layers.len()
        ));
    }
    let mut layers = Vec::with_capacity(q.plan.layers.len());
    for (lp, codes) in q.plan.layers.iter().zip(&q.codes) {
        let what = |e: String| format!("layer {:?}: {e}", lp.node);
        let node = g.nodes.iter().find(|n| n.name == lp.node).ok_or_else(|| {
            what("not in the model (was the plan made for another model?)".into())
        })?;
        let &w_id = node
            .inputs
            .get(1)
            .ok_or_else(|| what("no weight input".into()))?;
        let wshape = &g.values[w_id].shape;
        if *wshape != lp.weight_shape {
            return Err(what(format!(
                "weight shape {wshape:?} in the model, {:?} in the plan",
                lp.weight_shape
            )));
        }
        // Gemm/MatMul: the plan's codes are [out features, k]; Conv: [c_out, c_in/g*kh*kw].
        let (channels, k) = match &node.op {
            Op::Conv { conv, .. } => (conv.c_out, conv.depth()),
            Op::Gemm { trans_a: true, .. } => {
                return Err(what("Gemm with transA has no packed kernel".into()))
            }
            Op::Gemm { trans_b: true, .. } => (wshape[0], wshape[1]),
            Op::Gemm { trans_b: false, .. } | Op::MatMul { .. } => (wshape[1], wshape[0]),
            other => return Err(what(format!("{} has no packed kernel", other.name()))),
        };
        let bias = layer_bias(g, node, lp, channels).map_err(what)?;
        // The integer path where the layer's integers fit a container, else the lookup path.
        let layer = match integer_layer(g, node, lp, codes, channels, k, bias.clone()) {
            Ok((op, fused)) => PackedLayer {
                node: lp.node.clone(),
                op,
                fused_affine: fused,
                input_grid: None,
            },
            Err(int_err) => {
                let op = lookup_layer(node, lp, codes, channels, k, bias)
                    .map_err(|e| what(format!("{int_err}; the lookup path: {e}")))?;
                let input_grid = match &lp.act {
                    Some(a) => Some(
                        a.grid()
                            .ok_or_else(|| what("invalid activation format".into()))?,
                    ),
                    None => None,
                };
                PackedLayer {
                    node: lp.node.clone(),
                    op,
                    fused_affine: None,
                    input_grid,
                }
            }
        };
        layers.push(layer);
    }
    Ok(PackedModel { layers })
}

/// The layer's bias (times Gemm's beta), plus the plan's bias correction.
fn layer_bias(
    g: &Graph,
    node: &afp_engine::ir::Node,
    lp: &LayerPlan,
    channels: usize,
) -> Result<Option<Vec<f32>>, String> {
    let bias_const = |id: usize, beta: f32| -> Result<Vec<f32>, String> {
        let d = g.const_f32(id).ok_or("non-constant bias")?;
        match d.len() {
            1 => Ok(vec![d[0] * beta; channels]),
            n if n == channels => Ok(d.iter().map(|v| v * beta).collect()),
            n => Err(format!("bias of {n} values for {channels} outputs")),
        }
    };
    let mut bias = match &node.op {
        Op::Conv { .. } => node
            .inputs
            .get(2)
            .map(|&b| bias_const(b, 1.0))
            .transpose()?,
        Op::Gemm { beta, .. } => node
            .inputs
            .get(2)
            .map(|&b| bias_const(b, *beta))
            .transpose()?,
        _ => None,
    };
    if let Some(corr) = &lp.bias_correction {
        if corr.len() != channels {
            return Err("bias correction length differs from the outputs".into());
        }
        let b = bias.get_or_insert_with(|| vec![0.0; channels]);
        for (b, c) in b.iter_mut().zip(corr) {
            *b += c;
        }
    }
    Ok(bias)
}

/// The layer on AFP integers (DESIGN.md §1): its op and the name of a BatchNormalization
/// fused into it. Fails when the plan has no activation format or the integers fit no
/// container.
fn integer_layer(
    g: &Graph,
    node: &afp_engine::ir::Node,
    lp: &LayerPlan,
    codes: &[u8],
    channels: usize,
    k: usize,
    bias: Option<Vec<f32>>,
) -> Result<(Op, Option<String>), String> {
    let a = lp
        .act
        .as_ref()
        .ok_or("no activation format, so no integer inputs")?;
    let af: Format = a.format.format().ok_or("invalid activation format")?;
    if af.zero_mode() != ZeroMode::Subnormal {
        return Err("the integer kernels need the Subnormal zero mode".into());
    }
    let a_unit = a.offset - af.man_bits() as i32;
    let enc = ActEncoder::new(a_unit, af.man_bits(), af.int_bound() as u64, af.is_signed())
        .filter(|_| af.int_bound() <= i32::MAX as f64)
        .ok_or_else(|| {
            format!(
                "activation format {} at offset {} has no integer encoder",
                af.name(),
                a.offset
            )
        })?;
    let (ints, w_max, w_scale) = weight_integers(lp, codes, channels, k)?;
    let a_scale = 2f64.powi(a_unit);
    let alpha = match &node.op {
        Op::Gemm { alpha, .. } => *alpha as f64,
        _ => 1.0,
    };
    let mult: Vec<f32> = w_scale
        .iter()
        .map(|s| (s * a_scale * alpha) as f32)
        .collect();
    if mult.iter().any(|m| !m.is_normal()) {
        return Err("the product of weight and activation units is not a normal f32".into());
    }
    Ok(match &node.op {
        Op::Conv { conv, act } => {
            let mut q = QConv::new(conv.clone(), &ints, w_max, enc, mult, bias, *act)?;
            let mut fused = None;
            if let Some((name, scale, shift, bn_act)) = following_affine(g, node) {
                q = q.with_affine(scale, shift, bn_act)?;
                fused = Some(name);
            }
            (Op::QConv(Arc::new(q)), fused)
        }
        Op::Gemm { act, .. } | Op::MatMul { act } => (
            Op::QGemm(Arc::new(QGemm::new(
                channels, k, &ints, w_max, enc, mult, bias, *act,
            )?)),
            None,
        ),
        _ => unreachable!("checked by pack"),
    })
}

/// The layer on coded weights decoded through a table, f32 multiply-add: each weight is
/// `table[code] * row factor`, checked at every code and channel to be exactly the simulated
/// engine's decoded weight.
fn lookup_layer(
    node: &afp_engine::ir::Node,
    lp: &LayerPlan,
    codes: &[u8],
    channels: usize,
    k: usize,
    bias: Option<Vec<f32>>,
) -> Result<Op, String> {
    let groups = channel_groups(lp, codes, channels, k)?;
    let group_of = |r: usize| if groups == 1 { 0 } else { r };
    let (table, row_scale): (Vec<f32>, Vec<f32>) = match lp.weight.format.name {
        FormatName::Afp { .. } => {
            let f = lp.weight.format.format().ok_or("invalid weight format")?;
            let grid = |t: i32| Grid::new(f, t).map_err(|e| e.to_string());
            let t0 = lp.weight.offsets[0];
            let table = Lut::new(&grid(t0)?).values().to_vec();
            let mut row_scale = Vec::with_capacity(channels);
            let mut checked = std::collections::HashSet::new();
            for r in 0..channels {
                let t = lp.weight.offsets[group_of(r)];
                let s = 2f32.powi(t - t0);
                if checked.insert(t) {
                    let want = Lut::new(&grid(t)?);
                    if (0..=255u8).any(|c| table[c as usize] * s != want.decode(c)) {
                        return Err(format!(
                            "offset {t} is too far from {t0} for one decoding table"
                        ));
                    }
                }
                // Times a real scale: `(table * 2^(t - t0)) * real` rounds the same real
                // number as the simulated `decode_t * real`, as the power of two is exact.
                row_scale.push(s * lp.weight.scales.get(group_of(r)).copied().unwrap_or(1.0));
            }
            (table, row_scale)
        }
        FormatName::Int { bits } => {
            let shift = 32 - bits;
            let qmax = (1i32 << (bits - 1)) - 1;
            let sext = |c: u8| ((c as i32) << shift) >> shift;
            if let Some(c) = codes.iter().find(|&&c| sext(c) < -qmax) {
                return Err(format!("code {c} is outside INT{bits}"));
            }
            let table = (0..=255u8).map(|c| sext(c) as f32).collect();
            let row_scale = (0..channels)
                .map(|r| lp.weight.scales[group_of(r)])
                .collect();
            (table, row_scale)
        }
    };
    let w = CodedWeights::new(channels, k, codes.to_vec(), &table, row_scale)?;
    Ok(match &node.op {
        Op::Conv { conv, act } => {
            Op::LookupConv(Arc::new(LookupConv::new(conv.clone(), w, bias, *act)?))
        }
        Op::Gemm { alpha, act, .. } => {
            Op::LookupGemm(Arc::new(LookupGemm::new(w, *alpha, bias, *act)?))
        }
        Op::MatMul { act } => Op::LookupGemm(Arc::new(LookupGemm::new(w, 1.0, bias, *act)?)),
        _ => unreachable!("checked by pack"),
    })
}

/// The BatchNormalization (per-channel scale and shift) that alone reads `node`'s output,
/// when `node` has no activation of its own: name, scale, shift and its activation.
fn following_affine(
    g: &Graph,
    node: &afp_engine::ir::Node,
) -> Option<(String, Vec<f32>, Vec<f32>, afp_kernels::Activation)> {
    if !matches!(
        node.op,
        Op::Conv {
            act: afp_kernels::Activation::None,
            ..
        }
    ) || g.outputs.contains(&node.output)
    {
        return None;
    }
    let mut readers = g.nodes.iter().filter(|n| n.inputs.contains(&node.output));
    let bn = readers.next()?;
    if readers.next().is_some() || bn.inputs.first() != Some(&node.output) {
        return None;
    }
    let Op::ChannelAffine { act } = bn.op else {
        return None;
    };
    let scale = g.const_f32(*bn.inputs.get(1)?)?.to_vec();
    let shift = g.const_f32(*bn.inputs.get(2)?)?.to_vec();
    Some((bn.name.clone(), scale, shift, act))
}

/// Replaces the planned nodes of `g` by their packed layers; weights and biases they no
/// longer read are dropped from the graph.
pub fn apply_packed(g: &mut Graph, p: &PackedModel) -> Result<(), String> {
    for PackedLayer {
        node: name,
        op,
        fused_affine: fused,
        input_grid,
    } in &p.layers
    {
        let k = g
            .nodes
            .iter()
            .position(|n| &n.name == name)
            .ok_or_else(|| format!("layer {name:?} is not in the model"))?;
        let n = &mut g.nodes[k];
        if let (Op::QGemm(_) | Op::LookupGemm(_), Op::Gemm { .. } | Op::MatMul { .. })
        | (Op::QConv(_) | Op::LookupConv(_), Op::Conv { .. }) = (op, &n.op)
        {
        } else {
            return Err(format!("layer {name:?} is a {} in this graph", n.op.name()));
        }
        n.op = op.clone();
        let dropped: Vec<usize> = n.inputs.drain(1..).collect();
        if let Some(bn) = fused {
            // The packed op computes the BatchNormalization too: it writes that node's output.
            let j = g.nodes.iter().position(|n| &n.name == bn).ok_or_else(|| {
                format!("layer {name:?}: its BatchNormalization {bn:?} is not in the model")
            })?;
            let mut removed = g.nodes.remove(j);
            if removed.inputs.first() != Some(&g.nodes[k].output) {
                return Err(format!("layer {name:?}: {bn:?} does not read it"));
            }
            g.nodes[k].output = removed.output;
            let uses = g.use_counts();
            for v in removed.inputs.drain(1..) {
                if uses[v] == 0 {
                    g.values[v].konst = None;
                }
            }
        }
        let uses = g.use_counts();
        for v in dropped {
            if uses[v] == 0 {
                g.values[v].konst = None;
            }
        }
        if let Some(grid) = input_grid {
            crate::quantize::round_input(g, k, *grid);
        }
    }
    Ok(())
}

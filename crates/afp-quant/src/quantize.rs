//! From calibration statistics to a plan (per-layer search, bit allocation, activation
//! formats, bias correction), and applying a plan to a graph for simulated evaluation.

use crate::calib::InputStats;
use crate::plan::{LayerPlan, QuantizedModel, Totals};
use crate::search::{self, Family, SearchOptions};
use crate::weights::{self, WeightView};
use afp_engine::ir::{Graph, Node, Op, Value};
use afp_engine::Const;
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActMode {
    None,
    Bits(u32),
    /// Bits per layer input chosen under the `avg_act_bits` budget.
    Auto,
}

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub search: SearchOptions,
    /// Every layer at this width (unless `avg_bits`).
    pub bits: u32,
    /// Model-wide average weight bits (by parameter count).
    pub avg_bits: Option<f64>,
    pub acts: ActMode,
    pub act_family: Family,
    pub avg_act_bits: Option<f64>,
    pub keep_first_last: bool,
    pub bias_correct: bool,
    /// Bit-widths the budget allocation may choose from.
    pub min_bits: u32,
    pub max_bits: u32,
    /// Error-compensating rounding (needs Hessians from calibration); `None`: nearest.
    pub gptq: Option<crate::gptq::GptqOptions>,
}

/// Nodes whose weights are quantized: Conv, Gemm and 2-D MatMul with a constant weight.
pub fn quantizable_layers(g: &Graph) -> Vec<usize> {
    g.nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op.is_mac() && WeightView::of(g, n).is_some())
        .map(|(i, _)| i)
        .collect()
}

/// Chooses every layer's weight and activation formats. Returns the layer plans and, per
/// layer, the codes of its quantized weights.
pub fn plan_layers(
    g: &Graph,
    layers: &[usize],
    stats: &[InputStats],
    o: &QuantizeOptions,
) -> Result<(Vec<LayerPlan>, Vec<Vec<u8>>), String> {
    let views: Vec<WeightView> = layers
        .iter()
        .map(|&k| WeightView::of(g, &g.nodes[k]).expect("quantizable"))
        .collect();
    let first_last = |i: usize| o.keep_first_last && (i == 0 || i + 1 == layers.len());
    // Per layer, the best choice at each allowed bit-width.
    let widths: Vec<u32> = match (o.search.family.fixed_bits(), o.avg_bits) {
        (Some(b), _) => vec![b],
        (None, Some(_)) => (o.min_bits..=o.max_bits).collect(),
        (None, None) => vec![o.bits],
    };
    let per_layer: Vec<Vec<search::WeightChoice>> = (0..layers.len())
        .into_par_iter()
        .map(|i| {
            let ws: Vec<u32> = if first_last(i) && o.search.family.fixed_bits().is_none() {
                vec![8]
            } else {
                widths.clone()
            };
            ws.iter()
                .map(|&b| {
                    search::best_weights(&views[i], Some(&stats[i]), b, &o.search)
                        .map_err(|e| format!("layer {}: {e}", g.nodes[layers[i]].name))
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .collect::<Result<_, _>>()?;
    let pick: Vec<usize> = match o.avg_bits {
        Some(avg) if o.search.family.fixed_bits().is_none() => {
            let opts: Vec<Vec<(u32, f64)>> = per_layer
                .iter()
                .map(|cs| cs.iter().map(|c| (c.plan.format.bits, c.score)).collect())
                .collect();
            let params: Vec<usize> = views.iter().map(|v| v.data.len()).collect();
            let total: usize = params.iter().sum();
            search::allocate(&opts, &params, avg * total as f64)?
        }
        _ => vec![0; layers.len()],
    };
    // Activations.
    let act_elems: Vec<usize> = layers
        .iter()
        .map(|&k| g.values[g.nodes[k].inputs[0]].numel() / g.batch)
        .collect();
    let act_bits: Vec<Option<u32>> = match o.acts {
        ActMode::None => vec![None; layers.len()],
        ActMode::Bits(b) => (0..layers.len())
            .map(|i| Some(if first_last(i) { 8 } else { b }))
            .collect(),
        ActMode::Auto => {
            let budget = o.avg_act_bits.ok_or("--acts auto needs --avg-act-bits")?;
            let ws: Vec<u32> = (o.min_bits..=o.max_bits).collect();
            let opts: Vec<Vec<(u32, f64)>> = (0..layers.len())
                .map(|i| {
                    ws.iter()
                        .map(|&b| {
                            search::best_activation(
                                &stats[i],
                                b,
                                o.act_family,
                                o.search.zero_mode,
                                o.search.penalty,
                                o.search.int8_kernels,
                            )
                            .map(|a| (b, a.sqnr_db.map_or(0.0, |db| 10f64.powf(-db / 10.0))))
                        })
                        .collect::<Result<Vec<_>, String>>()
                })
                .collect::<Result<_, _>>()?;
            let total: usize = act_elems.iter().sum();
            let pick = search::allocate(&opts, &act_elems, budget * total as f64)?;
            pick.iter()
                .enumerate()
                .map(|(i, &j)| Some(opts[i][j].0))
                .collect()
        }
    };
    // The chosen configuration per layer, re-rounded by GPTQ when asked.
    let chosen: Vec<search::WeightChoice> = (0..layers.len())
        .into_par_iter()
        .map(|i| {
            let c = per_layer[i][pick[i]].clone();
            match o.gptq {
                Some(go) => gptq_rounding(&views[i], &stats[i], c, go)
                    .map_err(|e| format!("layer {}: {e}", g.nodes[layers[i]].name)),
                None => Ok(c),
            }
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(layers.len());
    let mut codes = Vec::with_capacity(layers.len());
    for (i, &k) in layers.iter().enumerate() {
        let n = &g.nodes[k];
        let c = &chosen[i];
        let act = match act_bits[i] {
            Some(b) => Some(
                search::best_activation(
                    &stats[i],
                    b,
                    o.act_family,
                    o.search.zero_mode,
                    o.search.penalty,
                    o.search.int8_kernels,
                )
                .map_err(|e| format!("layer {}: {e}", n.name))?,
            ),
            None => None,
        };
        let bias_correction = o
            .bias_correct
            .then(|| bias_shift(&views[i], &c.decoded, &stats[i]));
        out.push(LayerPlan {
            node: n.name.clone(),
            op: n.op.name().to_string(),
            weight_shape: views[i].shape.clone(),
            params: views[i].data.len(),
            act_elements: act_elems[i],
            weight: c.plan.clone(),
            act,
            objective: c.objective,
            weight_sqnr_db: c.sqnr_db,
            search_evaluations: c.evaluations,
            search_space: c.space,
            bias_correction,
        });
        codes.push(
            weights::encode_decoded(&c.plan, &c.decoded, views[i].channels, views[i].reduction)
                .map_err(|e| format!("layer {}: {e}", n.name))?,
        );
    }
    Ok((out, codes))
}

/// Re-rounds a chosen configuration's weights with GPTQ, keeping its formats and offsets.
fn gptq_rounding(
    w: &WeightView,
    stats: &InputStats,
    mut c: search::WeightChoice,
    o: crate::gptq::GptqOptions,
) -> Result<search::WeightChoice, String> {
    let groups = stats.hessians.len();
    if groups == 0 || !w.channels.is_multiple_of(groups) {
        return Err("GPTQ rounding needs the input Hessians from calibration".into());
    }
    let per_group = w.channels / groups;
    let k = w.reduction;
    let round = weights::channel_rounder(&c.plan, w.channels, k)?;
    let mut decoded = Vec::with_capacity(w.data.len());
    for (gi, h) in stats.hessians.iter().enumerate() {
        if h.k != k {
            return Err(format!("Hessian of size {} for {k} inputs", h.k));
        }
        let rows = &w.data[gi * per_group * k..(gi + 1) * per_group * k];
        let shifted = |r: usize, v: f32| round(gi * per_group + r, v);
        decoded.extend(crate::gptq::round(rows, per_group, h, o, &shifted)?);
    }
    c.sqnr_db = Some(weights::sqnr_db(&w.data, &decoded)).filter(|v| v.is_finite());
    c.decoded = decoded;
    Ok(c)
}

/// The bias change that cancels the mean output shift of quantized weights:
/// `-(W_q - W) . mean(x)` per output channel, with `mean(x)` over the calibration inputs.
fn bias_shift(w: &WeightView, decoded: &[f32], stats: &InputStats) -> Vec<f32> {
    let groups = stats.patches.len().max(1);
    let per_group = (w.channels / groups).max(1);
    let means: Vec<Vec<f32>> = (0..groups).map(|g| stats.mean_patch(g)).collect();
    (0..w.channels)
        .map(|c| {
            let m = &means[(c / per_group).min(groups - 1)];
            let k = w.reduction;
            -(0..k)
                .map(|i| (decoded[c * k + i] - w.data[c * k + i]) as f64 * m[i] as f64)
                .sum::<f64>() as f32
        })
        .collect()
}

pub fn totals(layers: &[LayerPlan]) -> Totals {
    let params: usize = layers.iter().map(|l| l.params).sum();
    let wbits: f64 = layers
        .iter()
        .map(|l| l.params as f64 * l.weight.format.bits as f64)
        .sum();
    let with_act: Vec<&LayerPlan> = layers.iter().filter(|l| l.act.is_some()).collect();
    let act_elems: usize = with_act.iter().map(|l| l.act_elements).sum();
    let abits: f64 = with_act
        .iter()
        .map(|l| l.act_elements as f64 * l.act.as_ref().map(|a| a.format.bits).unwrap_or(0) as f64)
        .sum();
    let side: usize = layers
        .iter()
        .map(|l| l.weight.offsets.len() + 4 * l.weight.scales.len())
        .sum();
    Totals {
        layers: layers.len(),
        params,
        avg_weight_bits: if params > 0 {
            wbits / params as f64
        } else {
            0.0
        },
        avg_act_bits: (act_elems > 0).then(|| abits / act_elems as f64),
        quantized_weight_bytes: layers
            .iter()
            .map(|l| (l.params * l.weight.format.bits as usize).div_ceil(8))
            .sum::<usize>()
            + side,
        fp32_weight_bytes: params * 4,
    }
}

/// Rewrites a lowered graph to the simulated quantized model: each planned layer gets its
/// weights decoded from their codes (and corrected bias), and its input is rounded to its
/// activation grid.
pub fn apply(g: &mut Graph, q: &QuantizedModel) -> Result<(), String> {
    if q.codes.len() != q.plan.layers.len() {
        return Err(format!(
            "{} code tensors for {} planned layers",
            q.codes.len(),
            q.plan.layers.len()
        ));
    }
    for (lp, codes) in q.plan.layers.iter().zip(&q.codes) {
        let k = g.nodes.iter().position(|n| n.name == lp.node).ok_or_else(|| format!("the plan's layer {:?} is not in the model (was the plan made for another model?)", lp.node))?;
        let view = WeightView::of(g, &g.nodes[k])
            .ok_or_else(|| format!("layer {:?} has no constant weight", lp.node))?;
        if view.shape != lp.weight_shape {
            return Err(format!(
                "layer {:?}: weight shape {:?} in the model, {:?} in the plan",
                lp.node, view.shape, lp.weight_shape
            ));
        }
        let decoded = weights::decode_codes(&lp.weight, codes, view.channels, view.reduction)
            .map_err(|e| format!("layer {:?}: {e}", lp.node))?;
        let wid = push_const(
            g,
            format!("{}:w_q", lp.node),
            view.shape.clone(),
            view.to_graph_layout(&decoded),
        );
        g.nodes[k].inputs[1] = wid;
        if let Some(corr) = &lp.bias_correction {
            let n = &g.nodes[k];
            let old: Vec<f32> = match n.inputs.get(2) {
                Some(&b) if g.values[b].numel() == corr.len() => {
                    g.const_f32(b).ok_or("non-constant bias")?.to_vec()
                }
                Some(_) => {
                    return Err(format!(
                        "layer {:?}: bias does not match the correction",
                        lp.node
                    ))
                }
                None => vec![0.0; corr.len()],
            };
            let b: Vec<f32> = old.iter().zip(corr).map(|(a, c)| a + c).collect();
            let bid = push_const(g, format!("{}:b_q", lp.node), vec![corr.len()], b);
            let n = &mut g.nodes[k];
            if n.inputs.len() > 2 {
                n.inputs[2] = bid;
            } else {
                n.inputs.push(bid);
            }
        }
        if let Some(a) = &lp.act {
            let grid = a
                .grid()
                .ok_or_else(|| format!("layer {:?}: invalid activation format", lp.node))?;
            let x = g.nodes[k].inputs[0];
            let q = g.values.len();
            g.values.push(Value {
                name: format!("{}:x_q", lp.node),
                shape: g.values[x].shape.clone(),
                konst: None,
            });
            g.nodes[k].inputs[0] = q;
            let node = Node {
                name: format!("{}:quantize_input", lp.node),
                op: Op::Quantize { grid },
                inputs: vec![x],
                output: q,
            };
            g.nodes.insert(k, node);
        }
    }
    Ok(())
}

fn push_const(g: &mut Graph, name: String, shape: Vec<usize>, data: Vec<f32>) -> usize {
    g.values.push(Value {
        name,
        shape: shape.clone(),
        konst: Some(Const::f32(shape, data)),
    });
    g.values.len() - 1
}

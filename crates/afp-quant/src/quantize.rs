//! From calibration statistics to a plan (per-layer search, bit allocation, activation
//! formats, bias correction), and applying a plan to a graph for simulated evaluation.

use crate::calib::InputStats;
use crate::plan::ActPlan;
use crate::plan::{LayerPlan, QuantizedModel, Totals};
use crate::search::{self, Family, SearchOptions};
use crate::weights::{self, WeightView};
use crate::{actcal, knapsack, sensitivity};
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
    /// How a weight budget (`avg_bits`) is spread over the layers. With sensitivity
    /// allocation, an activation budget (`ActMode::Auto`) is spread the same way, on each
    /// input's relative output error.
    pub allocation: Allocation,
    /// What activation formats and offsets minimize.
    pub act_objective: ActObjective,
    /// With sensitivity allocation: how many (layer, width) pairs to quantize alone and
    /// measure, to check the predicted cost against the measured KL.
    pub check_proxy: usize,
    /// AFP weights get a real scale per group on top of their power-of-two offsets
    /// ([`weights::with_real_scales`]); `false`: offsets only (the paper's).
    pub real_scales: bool,
}

/// What a layer input's format and offset minimize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActObjective {
    /// Relative squared error of the input values (sampled).
    Mse,
    /// Relative squared error of the layer's output, `||W (x - Q(x))||² / ||W x||²`, on
    /// sampled input vectors ([`crate::actcal`]).
    Output,
}

impl std::str::FromStr for ActObjective {
    type Err = String;
    fn from_str(s: &str) -> Result<ActObjective, String> {
        match s {
            "mse" => Ok(ActObjective::Mse),
            "output" => Ok(ActObjective::Output),
            _ => Err(format!("unknown activation objective {s:?}: mse, output")),
        }
    }
}

/// How `avg_bits` is spread over the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Greedy on each layer's own weight objective (the search's score).
    WeightError,
    /// Exact knapsack on the predicted network cost `s_l * e_l(b)` (see [`crate::sensitivity`]):
    /// needs input Hessians from calibration and probe images.
    Sensitivity,
}

impl std::str::FromStr for Allocation {
    type Err = String;
    fn from_str(s: &str) -> Result<Allocation, String> {
        match s {
            "weight-error" => Ok(Allocation::WeightError),
            "sensitivity" => Ok(Allocation::Sensitivity),
            _ => Err(format!(
                "unknown allocation {s:?}: weight-error, sensitivity"
            )),
        }
    }
}

impl QuantizeOptions {
    /// Whether calibration must accumulate input Hessians (GPTQ, sensitivity allocation).
    pub fn needs_hessians(&self) -> bool {
        self.gptq.is_some() || self.sensitivity_allocation()
    }
    /// Whether the weight budget is allocated by measured sensitivity.
    pub fn sensitivity_allocation(&self) -> bool {
        self.avg_bits.is_some()
            && self.search.family.fixed_bits().is_none()
            && self.allocation == Allocation::Sensitivity
    }
}

/// Calibration images run through the FP32 graph for sensitivity allocation: `input` to
/// measure the sensitivities, `check` (other images) to check the prediction. `graph`: the
/// model lowered for their batch size, when it is not the calibration graph's.
pub struct ProbeImages {
    pub graph: Option<Graph>,
    pub input: Vec<f32>,
    pub check: Option<Vec<f32>>,
    pub threads: usize,
}

/// One (layer, width) of the proxy check: predicted and measured KL of quantizing that layer
/// alone.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProxyPoint {
    pub layer: String,
    pub bits: u32,
    pub output_error: f64,
    pub predicted_kl: f64,
    pub measured_kl: f64,
}

/// What planning found besides the plan.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PlanDiagnostics {
    /// The relative output energy of the noise that measured the sensitivities.
    pub noise_level: Option<f64>,
    /// Images the sensitivities were measured on (set by the caller that chose them).
    pub sensitivity_images: Option<usize>,
    pub proxy_check: Vec<ProxyPoint>,
    /// Spearman rank correlation of predicted and measured KL over `proxy_check`.
    pub proxy_rank_correlation: Option<f64>,
    // Run times are not serialized: what is written (the quantize report) must be the same
    // bytes for the same inputs. Callers print them.
    /// Seconds spent measuring sensitivities (forward passes).
    #[serde(skip)]
    pub sensitivity_seconds: Option<f64>,
    /// Seconds spent rounding every candidate width with GPTQ, and computing the output
    /// errors of every candidate.
    #[serde(skip)]
    pub candidate_gptq_seconds: Option<f64>,
    #[serde(skip)]
    pub output_error_seconds: Option<f64>,
    /// Seconds of calibration (set by the caller that ran it).
    #[serde(skip)]
    pub calibration_seconds: Option<f64>,
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
    plan_layers_probed(g, layers, stats, o, None).map(|(l, c, _)| (l, c))
}

/// Layer plans, the codes of each layer's weights, and what planning measured.
pub type PlannedLayers = (Vec<LayerPlan>, Vec<Vec<u8>>, PlanDiagnostics);

/// As [`plan_layers`], with probe images for sensitivity allocation (required by it).
pub fn plan_layers_probed(
    g: &Graph,
    layers: &[usize],
    stats: &[InputStats],
    o: &QuantizeOptions,
    probe: Option<&ProbeImages>,
) -> Result<PlannedLayers, String> {
    let views: Vec<WeightView> = layers
        .iter()
        .map(|&k| WeightView::of(g, &g.nodes[k]).expect("quantizable"))
        .collect();
    let first_last = |i: usize| o.keep_first_last && (i == 0 || i + 1 == layers.len());
    // Per layer, the best choice at each allowed bit-width.
    let widths: Vec<u32> = match (o.search.family.fixed_bits(), o.avg_bits) {
        (Some(b), _) => vec![b],
        // A budget spreads over the widths that have a format (with `--int8-kernels`, the
        // widest ones have none).
        (None, Some(_)) => (o.min_bits..=o.max_bits)
            .filter(|&b| !search::weight_formats(b, &o.search).is_empty())
            .collect(),
        (None, None) => vec![o.bits],
    };
    if widths.is_empty() {
        return Err(format!(
            "no width from {} to {} bits has a weight format the 8-bit integer kernels run",
            o.min_bits, o.max_bits
        ));
    }
    let mut per_layer: Vec<Vec<search::WeightChoice>> = (0..layers.len())
        .into_par_iter()
        .map(|i| {
            let ws: Vec<u32> = if first_last(i) && o.search.family.fixed_bits().is_none() {
                vec![8]
            } else {
                widths.clone()
            };
            ws.iter()
                .map(|&b| {
                    let c = search::best_weights(&views[i], Some(&stats[i]), b, &o.search)?;
                    if !o.real_scales {
                        return Ok(c);
                    }
                    let (plan, decoded) = weights::with_real_scales(&views[i], c.plan, c.decoded)?;
                    let sqnr_db = Some(weights::sqnr_db(&views[i].data, &decoded));
                    Ok(search::WeightChoice {
                        plan,
                        decoded,
                        sqnr_db,
                        ..c
                    })
                })
                .collect::<Result<Vec<_>, String>>()
                .map_err(|e| format!("layer {}: {e}", g.nodes[layers[i]].name))
        })
        .collect::<Result<_, _>>()?;
    let params: Vec<usize> = views.iter().map(|v| v.data.len()).collect();
    let mut diag = PlanDiagnostics::default();
    // Per layer: sensitivity and relative output error of the chosen width.
    let mut sens_info: Vec<Option<(f64, f64)>> = vec![None; layers.len()];
    let mut rounded = false;
    let mut sens_vec: Option<Vec<f64>> = None;
    let pick: Vec<usize> = match o.avg_bits {
        Some(avg) if o.sensitivity_allocation() => {
            let probe = probe.ok_or("sensitivity allocation needs probe images")?;
            let pg = probe.graph.as_ref().unwrap_or(g);
            if stats.iter().any(|s| s.hessians.is_empty()) {
                return Err(
                    "sensitivity allocation needs the input Hessians from calibration".into(),
                );
            }
            // Every candidate rounded as it will be (GPTQ: one factorization per layer).
            let t = std::time::Instant::now();
            if let Some(go) = o.gptq {
                per_layer = per_layer
                    .into_par_iter()
                    .enumerate()
                    .map(|(i, cs)| {
                        gptq_widths(&views[i], &stats[i], cs, go)
                            .map_err(|e| format!("layer {}: {e}", g.nodes[layers[i]].name))
                    })
                    .collect::<Result<_, _>>()?;
                rounded = true;
                diag.candidate_gptq_seconds = Some(t.elapsed().as_secs_f64());
            }
            let t = std::time::Instant::now();
            let signals: Vec<f64> = (0..layers.len())
                .into_par_iter()
                .map(|i| {
                    sensitivity::output_energy(
                        &views[i].data,
                        views[i].channels,
                        &stats[i].hessians,
                    )
                })
                .collect::<Result<_, _>>()?;
            let errors: Vec<Vec<f64>> = (0..layers.len())
                .into_par_iter()
                .map(|i| {
                    // With bias correction, the mean output shift is cancelled: leave it out.
                    let means: Option<Vec<Vec<f32>>> = o.bias_correct.then(|| {
                        (0..stats[i].patches.len())
                            .map(|g| stats[i].mean_patch(g))
                            .collect()
                    });
                    per_layer[i]
                        .iter()
                        .map(|c| {
                            sensitivity::relative_output_error(
                                &views[i],
                                &c.decoded,
                                &stats[i].hessians,
                                signals[i],
                                means.as_deref(),
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .collect::<Result<_, _>>()?;
            diag.output_error_seconds = Some(t.elapsed().as_secs_f64());
            // Noise at the typical error of the width nearest the budget: the decisions are
            // made around it.
            let mid = avg.round() as u32;
            let mut at_mid: Vec<f64> = per_layer
                .iter()
                .zip(&errors)
                .filter_map(|(cs, es)| {
                    cs.iter()
                        .position(|c| c.plan.format.bits == mid)
                        .map(|j| es[j])
                })
                .filter(|&e| e > 0.0)
                .collect();
            at_mid.sort_by(f64::total_cmp);
            let level = at_mid
                .get(at_mid.len() / 2)
                .copied()
                .unwrap_or(1e-2)
                .clamp(1e-4, 0.1);
            let t = std::time::Instant::now();
            let mut pr = sensitivity::Probe::new(pg, probe.input.clone(), probe.threads)?;
            let hs: Vec<&[crate::gptq::Hessian]> =
                stats.iter().map(|s| s.hessians.as_slice()).collect();
            let s = sensitivity::measure(&mut pr, layers, &views, &hs, &signals, level)?;
            sens_vec = Some(s.clone());
            diag.noise_level = Some(level);
            diag.sensitivity_seconds = Some(t.elapsed().as_secs_f64());
            let opts: Vec<Vec<(u32, f64)>> = per_layer
                .iter()
                .zip(&errors)
                .zip(&s)
                .map(|((cs, es), &sl)| {
                    cs.iter()
                        .zip(es)
                        .map(|(c, &e)| (c.plan.format.bits, sl * e))
                        .collect()
                })
                .collect();
            let total: usize = params.iter().sum();
            let pick = knapsack::solve(&opts, &params, avg * total as f64)?;
            for i in 0..layers.len() {
                sens_info[i] = Some((s[i], errors[i][pick[i]]));
            }
            if o.check_proxy > 0 {
                let mut pc = match &probe.check {
                    Some(x) => sensitivity::Probe::new(pg, x.clone(), probe.threads)?,
                    None => pr,
                };
                let free: Vec<usize> = (0..layers.len())
                    .filter(|&i| per_layer[i].len() > 1)
                    .collect();
                let n = o.check_proxy.min(free.len() * 2);
                for j in 0..n {
                    let i = free[j * free.len() / n];
                    let w = j % per_layer[i].len().min(4);
                    let c = &per_layer[i][w];
                    let measured = pc.kl_with(layers[i], &views[i], &c.decoded)?;
                    diag.proxy_check.push(ProxyPoint {
                        layer: g.nodes[layers[i]].name.clone(),
                        bits: c.plan.format.bits,
                        output_error: errors[i][w],
                        predicted_kl: opts[i][w].1,
                        measured_kl: measured,
                    });
                }
                let (a, b): (Vec<f64>, Vec<f64>) = diag
                    .proxy_check
                    .iter()
                    .map(|p| (p.predicted_kl, p.measured_kl))
                    .unzip();
                diag.proxy_rank_correlation = (a.len() > 1).then(|| sensitivity::spearman(&a, &b));
            }
            pick
        }
        Some(avg) if o.search.family.fixed_bits().is_none() => {
            let opts: Vec<Vec<(u32, f64)>> = per_layer
                .iter()
                .map(|cs| cs.iter().map(|c| (c.plan.format.bits, c.score)).collect())
                .collect();
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
    // Per layer, the candidate activation plans (one per width) with their error: relative
    // output error when chosen by it, else relative input error.
    let use_sens_acts = o.acts == ActMode::Auto && sens_vec.is_some();
    let by_output = o.act_objective == ActObjective::Output || use_sens_acts;
    let act_opts: Vec<Vec<(ActPlan, f64)>> = (0..layers.len())
        .into_par_iter()
        .map(|i| {
            let widths: Vec<u32> = match o.acts {
                ActMode::None => vec![],
                ActMode::Bits(b) => vec![if first_last(i) { 8 } else { b }],
                ActMode::Auto => (o.min_bits..=o.max_bits).collect(),
            };
            if widths.is_empty() {
                return Ok(vec![]);
            }
            let probe = match by_output {
                true => Some(actcal::OutputProbe::new(&views[i], &stats[i])?),
                false => None,
            };
            let (fam, zm, pen) = (o.act_family, o.search.zero_mode, o.search.penalty);
            let i8k = o.search.int8_kernels;
            widths
                .iter()
                .map(|&b| match &probe {
                    Some(p) => actcal::best_by_output(p, &stats[i], b, fam, zm, pen, i8k),
                    None => search::best_activation(&stats[i], b, fam, zm, pen, i8k).map(|a| {
                        let e = a.sqnr_db.map_or(0.0, |db| 10f64.powf(-db / 10.0));
                        (a, e)
                    }),
                })
                .collect::<Result<Vec<_>, String>>()
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| format!("activations: {e}"))?;
    let act_plans: Vec<Option<ActPlan>> = match o.acts {
        ActMode::None => vec![None; layers.len()],
        ActMode::Bits(_) => act_opts.iter().map(|a| Some(a[0].0.clone())).collect(),
        ActMode::Auto => {
            let budget = o.avg_act_bits.ok_or("--acts auto needs --avg-act-bits")?;
            let total: usize = act_elems.iter().sum();
            let pick = match &sens_vec {
                Some(sv) if use_sens_acts => {
                    let opts: Vec<Vec<(u32, f64)>> = act_opts
                        .iter()
                        .zip(sv)
                        .map(|(a, &sl)| a.iter().map(|(p, e)| (p.format.bits, sl * e)).collect())
                        .collect();
                    knapsack::solve(&opts, &act_elems, budget * total as f64)?
                }
                _ => {
                    let opts: Vec<Vec<(u32, f64)>> = act_opts
                        .iter()
                        .map(|a| a.iter().map(|(p, e)| (p.format.bits, *e)).collect())
                        .collect();
                    search::allocate(&opts, &act_elems, budget * total as f64)?
                }
            };
            pick.iter()
                .enumerate()
                .map(|(i, &j)| Some(act_opts[i][j].0.clone()))
                .collect()
        }
    };
    // The chosen configuration per layer, re-rounded by GPTQ when asked.
    let chosen: Vec<search::WeightChoice> = (0..layers.len())
        .into_par_iter()
        .map(|i| {
            let c = per_layer[i][pick[i]].clone();
            match o.gptq {
                Some(_) if rounded => Ok(c),
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
        let act = act_plans[i].clone();
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
            sensitivity: sens_info[i].map(|s| s.0),
            output_error: sens_info[i].map(|s| s.1),
        });
        codes.push(
            weights::encode_decoded(&c.plan, &c.decoded, views[i].channels, views[i].reduction)
                .map_err(|e| format!("layer {}: {e}", n.name))?,
        );
    }
    Ok((out, codes, diag))
}

/// Re-rounds a chosen configuration's weights with GPTQ, keeping its formats and offsets.
fn gptq_rounding(
    w: &WeightView,
    stats: &InputStats,
    c: search::WeightChoice,
    o: crate::gptq::GptqOptions,
) -> Result<search::WeightChoice, String> {
    Ok(gptq_widths(w, stats, vec![c], o)?.remove(0))
}

/// Re-rounds several configurations of one layer's weights (the candidate widths) with GPTQ,
/// factoring each group's Hessian once.
fn gptq_widths(
    w: &WeightView,
    stats: &InputStats,
    cs: Vec<search::WeightChoice>,
    o: crate::gptq::GptqOptions,
) -> Result<Vec<search::WeightChoice>, String> {
    let groups = stats.hessians.len();
    if groups == 0 || !w.channels.is_multiple_of(groups) {
        return Err("GPTQ rounding needs the input Hessians from calibration".into());
    }
    let per_group = w.channels / groups;
    let k = w.reduction;
    if let Some(h) = stats.hessians.iter().find(|h| h.k != k) {
        return Err(format!("Hessian of size {} for {k} inputs", h.k));
    }
    let factors: Vec<crate::gptq::Factor> = stats
        .hessians
        .iter()
        .map(|h| crate::gptq::Factor::new(h, o))
        .collect::<Result<_, _>>()?;
    cs.into_iter()
        .map(|mut c| {
            let round = weights::channel_rounder(&c.plan, w.channels, k)?;
            let mut decoded = Vec::with_capacity(w.data.len());
            for (gi, f) in factors.iter().enumerate() {
                let rows = &w.data[gi * per_group * k..(gi + 1) * per_group * k];
                let shifted = |r: usize, v: f32| round(gi * per_group + r, v);
                decoded.extend(f.round(rows, per_group, &shifted)?);
            }
            c.sqnr_db = Some(weights::sqnr_db(&w.data, &decoded)).filter(|v| v.is_finite());
            c.decoded = decoded;
            Ok(c)
        })
        .collect()
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
            round_input(g, k, grid);
        }
    }
    Ok(())
}

/// Puts a [`Op::Quantize`] node on `grid` before node `k`, rounding its first input.
pub(crate) fn round_input(g: &mut Graph, k: usize, grid: afp_format::Grid) {
    let name = g.nodes[k].name.clone();
    let x = g.nodes[k].inputs[0];
    let q = g.values.len();
    g.values.push(Value {
        name: format!("{name}:x_q"),
        shape: g.values[x].shape.clone(),
        konst: None,
    });
    g.nodes[k].inputs[0] = q;
    let node = Node {
        name: format!("{name}:quantize_input"),
        op: Op::Quantize { grid },
        inputs: vec![x],
        output: q,
    };
    g.nodes.insert(k, node);
}

fn push_const(g: &mut Graph, name: String, shape: Vec<usize>, data: Vec<f32>) -> usize {
    g.values.push(Value {
        name,
        shape: shape.clone(),
        konst: Some(Const::f32(shape, data)),
    });
    g.values.len() - 1
}

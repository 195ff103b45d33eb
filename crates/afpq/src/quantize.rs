use crate::common::{self, DataArgs, OutputArgs, ThreadsArg};
use crate::engine_run::Classifier;
use afp_format::{offset::OffsetRule, Granularity, ZeroMode};
use afp_quant::{ActMode, Family, Objective, Plan, QuantizeOptions, QuantizedModel, SearchOptions};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The weight width and format family: given once by `quantize`, swept by `sweep`.
#[derive(clap::Args, Clone)]
pub struct WidthArgs {
    /// Bits per weight for every layer (2..8).
    #[arg(long, default_value_t = 8)]
    pub bits: u32,
    /// Model-wide average weight bits (by parameter count); per-layer widths from --min-bits
    /// to --max-bits are chosen by --allocate.
    #[arg(long)]
    pub avg_bits: Option<f64>,
    /// Narrowest width a budget (--avg-bits, --acts auto) may give a layer.
    #[arg(long, default_value_t = 3)]
    pub min_bits: u32,
    /// Widest width a budget (--avg-bits, --acts auto) may give a layer.
    #[arg(long, default_value_t = 8)]
    pub max_bits: u32,
    /// Format family: afp, int, fp8-e4m3, fp8-e5m2, fp6-e3m2, fp6-e2m3, fp4-e2m1.
    #[arg(long, default_value = "afp")]
    pub format: String,
}

/// Quantization options other than the weight width and family.
#[derive(clap::Args, Clone)]
pub struct QuantArgs {
    /// Layer inputs: `none`, a bit-width, or `auto` (widths under --avg-act-bits).
    #[arg(long, default_value = "none")]
    pub acts: String,
    /// Average activation bits (by element count) for --acts auto.
    #[arg(long)]
    pub avg_act_bits: Option<f64>,
    /// Weight offsets per output channel or per tensor.
    #[arg(long, default_value = "channel")]
    pub granularity: String,
    /// kl (the paper's), mse (weight error) or output (layer output error on calibration data).
    #[arg(long, default_value = "mse")]
    pub objective: String,
    /// Weight of the hardware-cost term in the objective.
    #[arg(long, default_value_t = 0.0)]
    pub penalty: f64,
    /// Offset rule inside each group: cover (no clipping, the paper) or mse.
    #[arg(long, default_value = "mse")]
    pub offset: String,
    /// Format family of activations (default: afp).
    #[arg(long, default_value = "afp")]
    pub act_format: String,
    /// Zero mode of AFP formats.
    #[arg(long, default_value = "subnormal")]
    pub zero_mode: String,
    /// Keep the first and last layers at 8 bits.
    #[arg(long)]
    pub keep_first_last: bool,
    /// Correct each layer's mean output shift on calibration data.
    #[arg(long)]
    pub bias_correct: bool,
    /// exhaustive (every E/M split, offsets by --offset) or bayes (Bayesian optimization over
    /// E/M split and offset shift, as the paper did; the report counts its evaluations).
    #[arg(long, default_value = "exhaustive")]
    pub search: String,
    /// Fold BatchNorm into the weights before quantizing them (`true`), or quantize the
    /// convolution's own weights and keep BatchNorm as a per-channel scale and shift after it
    /// (`false`, the default: more accurate at 4 to 6 bits on ResNet-50, and the scale is one
    /// multiply per output in an integer kernel's epilogue).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub fold_bn: bool,
    /// Calibration images from the dataset (spread over it deterministically).
    #[arg(long, default_value_t = 32)]
    pub calib: usize,
    /// Weight rounding: nearest (each weight to its nearest level) or gptq (error-compensating:
    /// each layer's output on the calibration images stays close; uses their input Hessians).
    #[arg(long, default_value = "nearest")]
    pub rounding: String,
    /// GPTQ damping, relative to the mean of the Hessian's diagonal.
    #[arg(long, default_value_t = 0.01)]
    pub gptq_damp: f64,
    /// Choose only formats the packed engine runs on its fast 8-bit integer kernels: weight
    /// integers |n| <= 64, activation integers in u8 (i8 if signed), e.g. E2M2 weights and
    /// uE1M7 activations (hardware-aware search; `afpq bench` then runs AVX2 kernels).
    #[arg(long)]
    pub int8_kernels: bool,
    /// How --avg-bits is spread over the layers: weight-error (greedy on each layer's own
    /// weight objective) or sensitivity (exact knapsack on the predicted network cost: each
    /// layer's relative output error at each width, rounded as --rounding says, times the KL
    /// per unit of output error measured by injecting noise into that layer; one forward pass
    /// of --sensitivity-images calibration images per layer).
    #[arg(long, default_value = "weight-error")]
    pub allocate: String,
    /// With --allocate sensitivity: quantize N (layer, width) pairs alone and compare the
    /// predicted KL with the KL measured on as many other calibration images as
    /// --sensitivity-images (report: rank correlation).
    #[arg(long, default_value_t = 0)]
    pub check_proxy: usize,
    /// With --allocate sensitivity: calibration images each noise measurement runs on (the
    /// proxy check uses as many others) [default: 32, fewer for models of more than 1 GMAC
    /// per image, so the measurement costs about as much as 32 images of a 1-GMAC model:
    /// ResNet-50 gets 8]. EfficientNet-Lite0's 5.7-bit plans varied by a point between
    /// calibration sets with 8 images and met a 0.6-point drop on all six tried with 32
    /// (docs/ACCURACY.md, session 14).
    #[arg(long)]
    pub sensitivity_images: Option<usize>,
    /// What each layer input's format and offset minimize: mse (squared error of the input
    /// values) or output (squared error of the layer's output on sampled input vectors).
    #[arg(long, default_value = "mse")]
    pub act_objective: String,
    /// AFP weight scales: po2 (a power-of-two offset per channel, the paper's: the integer
    /// kernels need no multiply for it) or real (a real factor per channel on top, chosen by
    /// weight error among 2^(j/16), |j| <= 16; one multiply per output in the epilogue).
    #[arg(long, default_value = "po2")]
    pub scale: String,
}

#[derive(clap::Args)]
pub struct Args {
    /// ONNX model (default: the card's model).
    model: Option<PathBuf>,
    /// Output plan file (.afp).
    #[arg(short, long)]
    output: PathBuf,
    /// The JSON report (default: OUTPUT with .report.json).
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    w: WidthArgs,
    #[command(flatten)]
    q: QuantArgs,
    #[command(flatten)]
    threads: ThreadsArg,
    #[command(flatten)]
    out: OutputArgs,
}

/// Width and quantization options as the command line gives them (clap's defaults for what
/// `args` leaves out), for commands that quantize with fixed settings (`afpq demo`).
pub fn options_from(args: &[&str]) -> Result<(WidthArgs, QuantArgs)> {
    use clap::Parser;
    #[derive(Parser)]
    struct Both {
        #[command(flatten)]
        w: WidthArgs,
        #[command(flatten)]
        q: QuantArgs,
    }
    let m = Both::try_parse_from(std::iter::once("afpq").chain(args.iter().copied()))?;
    Ok((m.w, m.q))
}

impl QuantArgs {
    pub fn options(&self, w: &WidthArgs) -> Result<QuantizeOptions> {
        let family: Family = w.format.parse().map_err(anyhow::Error::msg)?;
        let act_family: Family = self.act_format.parse().map_err(anyhow::Error::msg)?;
        let granularity: Granularity = self.granularity.parse()?;
        if !matches!(
            granularity,
            Granularity::PerTensor | Granularity::PerChannel
        ) {
            bail!("--granularity is tensor or channel");
        }
        if !(2..=8).contains(&w.bits) {
            bail!("--bits must be 2..8");
        }
        let acts = match self.acts.as_str() {
            "none" => ActMode::None,
            "auto" => ActMode::Auto,
            b => match b.parse::<u32>() {
                Ok(b) if (2..=8).contains(&b) => ActMode::Bits(b),
                _ => bail!("--acts is none, auto or a bit-width 2..8"),
            },
        };
        if !(2 <= w.min_bits && w.min_bits <= w.max_bits && w.max_bits <= 8) {
            bail!(
                "--min-bits {} and --max-bits {} must satisfy 2 <= min <= max <= 8",
                w.min_bits,
                w.max_bits
            );
        }
        let widths = w.min_bits as f64..=w.max_bits as f64;
        let act_budget = self.avg_act_bits.filter(|_| acts == ActMode::Auto);
        for (flag, budget) in [("--avg-bits", w.avg_bits), ("--avg-act-bits", act_budget)] {
            if let Some(a) = budget.filter(|a| !widths.contains(a)) {
                bail!(
                    "{flag} {a} is outside the widths a layer may have, {} to {} \
                     (--min-bits, --max-bits)",
                    w.min_bits,
                    w.max_bits
                );
            }
        }
        Ok(QuantizeOptions {
            search: SearchOptions {
                strategy: self
                    .search
                    .parse::<afp_quant::Strategy>()
                    .map_err(anyhow::Error::msg)?,
                family,
                granularity,
                objective: self
                    .objective
                    .parse::<Objective>()
                    .map_err(anyhow::Error::msg)?,
                penalty: self.penalty,
                offset_rule: self.offset.parse::<OffsetRule>()?,
                zero_mode: self.zero_mode.parse::<ZeroMode>()?,
                int8_kernels: self.int8_kernels,
            },
            bits: w.bits,
            avg_bits: w.avg_bits,
            acts,
            act_family,
            avg_act_bits: self.avg_act_bits,
            keep_first_last: self.keep_first_last,
            bias_correct: self.bias_correct,
            min_bits: w.min_bits,
            max_bits: w.max_bits,
            gptq: match self.rounding.as_str() {
                "nearest" => None,
                "gptq" => {
                    if !(self.gptq_damp > 0.0 && self.gptq_damp.is_finite()) {
                        bail!("--gptq-damp must be positive");
                    }
                    Some(afp_quant::gptq::GptqOptions {
                        damp: self.gptq_damp,
                        act_order: true,
                    })
                }
                r => bail!("--rounding is nearest or gptq, not {r:?}"),
            },
            allocation: self
                .allocate
                .parse::<afp_quant::Allocation>()
                .map_err(anyhow::Error::msg)?,
            check_proxy: self.check_proxy,
            real_scales: match self.scale.as_str() {
                "po2" => false,
                "real" => true,
                s => bail!("--scale is po2 or real, not {s:?}"),
            },
            act_objective: self
                .act_objective
                .parse::<afp_quant::ActObjective>()
                .map_err(anyhow::Error::msg)?,
        })
    }

    pub fn describe(&self, w: &WidthArgs) -> serde_json::Value {
        let budget = w.avg_bits.is_some() || self.acts == "auto";
        json!({
            "bits": w.bits, "avg_bits": w.avg_bits,
            "min_bits": budget.then_some(w.min_bits), "max_bits": budget.then_some(w.max_bits), "format": w.format, "acts": self.acts, "avg_act_bits": self.avg_act_bits,
            "granularity": self.granularity, "objective": self.objective, "penalty": self.penalty,
            "offset": self.offset, "act_format": self.act_format, "zero_mode": self.zero_mode, "int8_kernels": self.int8_kernels,
            "keep_first_last": self.keep_first_last, "bias_correct": self.bias_correct, "calib": self.calib,
            "search": self.search, "fold_bn": self.fold_bn, "rounding": self.rounding, "scale": self.scale,
            "gptq_damp": (self.rounding == "gptq").then_some(self.gptq_damp),
            "allocate": w.avg_bits.is_some().then_some(&self.allocate),
            "act_objective": (self.acts != "none").then_some(&self.act_objective),
            "sensitivity_images": (w.avg_bits.is_some() && self.allocate == "sensitivity").then_some(self.sensitivity_images.map_or(json!("auto"), |n| json!(n))),
        })
    }
}

/// Images for the sensitivity measurement when `--sensitivity-images` is not given: 32, or
/// as many as cost about the same as 32 images of a 1-GMAC model (at least 8). `g` is
/// lowered for `batch` images.
fn default_sensitivity_images(g: &afp_engine::Graph, batch: usize) -> usize {
    let macs: u64 = g.nodes.iter().map(|n| g.node_macs(n)).sum();
    sensitivity_images_for(macs as f64 / batch.max(1) as f64)
}

/// [`default_sensitivity_images`] for a model of `macs_per_image` multiply-adds per image.
fn sensitivity_images_for(macs_per_image: f64) -> usize {
    ((32.0 * 1e9 / macs_per_image.max(1.0)).floor() as usize).clamp(8, 32)
}

/// Calibrates and plans `model` (read from `model_path`). Returns the plan and codes (not
/// yet written), and what the sensitivity allocation measured.
pub fn make_plan(
    model: &afp_engine::Model,
    model_path: &Path,
    data: &DataArgs,
    w: &WidthArgs,
    q: &QuantArgs,
    threads: usize,
    quiet: bool,
) -> Result<(QuantizedModel, afp_quant::PlanDiagnostics)> {
    let opts = q.options(w)?;
    let src = data.source()?;
    let ds = data.dataset(&src)?;
    let clf = Classifier::new(model.clone(), threads)?;
    clf.check_input(src.preprocess.chw())?;
    if q.calib == 0 {
        bail!("--calib must be at least 1");
    }
    let idx = afp_eval::dataset::calibration_indices(ds.len(), q.calib.min(ds.len()), 0);
    let batch = 8.min(idx.len());
    let g = clf.model.lower_with(
        batch,
        afp_engine::passes::PassOptions {
            fold_batchnorm: q.fold_bn,
        },
    )?;
    let layers = afp_quant::quantizable_layers(&g);
    if layers.is_empty() {
        bail!("the model has no Conv, Gemm or MatMul layer with constant weights to quantize");
    }
    for &k in &layers {
        let w = g.values[g.nodes[k].inputs[1]]
            .konst
            .as_ref()
            .and_then(|c| c.as_f32())
            .unwrap_or(&[]);
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            bail!(
                "layer {:?}: weight {:?} has a non-finite value ({}) at index {i}",
                g.nodes[k].name,
                g.values[g.nodes[k].inputs[1]].name,
                w[i]
            );
        }
    }
    let mut cal = afp_quant::calib::Calibrator::new(&g, &layers, opts.needs_hessians());
    // The first calibration images: sensitivity measurement and its check.
    let probe_n = q
        .sensitivity_images
        .unwrap_or_else(|| default_sensitivity_images(&g, batch))
        .clamp(1, 64);
    let mut probe_x: Vec<f32> = Vec::new();
    let t_cal = std::time::Instant::now();
    let mut session = afp_engine::Session::new(g.clone(), threads)?;
    let pb = common::progress(idx.len() as u64, "calibrate", quiet);
    let per = src.preprocess.image_len();
    for chunk in idx.chunks(batch) {
        let mut x = afp_eval::load_batch_vec(&ds, chunk, &src.preprocess)?;
        if chunk.len() < batch {
            // The graph is lowered for `batch` images: repeat the last image to fill it.
            let last = x[(chunk.len() - 1) * per..].to_vec();
            while x.len() < batch * per {
                x.extend_from_slice(&last);
            }
        }
        cal.observe(&mut session, &x)?;
        if opts.sensitivity_allocation() && probe_x.len() < 2 * probe_n * per {
            let take = (2 * probe_n * per - probe_x.len()).min(chunk.len() * per);
            probe_x.extend_from_slice(&x[..take]);
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let stats = cal.finish();
    if let Some((k, _)) = layers
        .iter()
        .zip(&stats)
        .find(|(_, s)| !s.min.is_finite() || !s.max.is_finite())
    {
        bail!(
            "calibration: the input of layer {:?} is not finite",
            g.nodes[*k].name
        );
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let calibration_seconds = t_cal.elapsed().as_secs_f64();
    let probe = if opts.sensitivity_allocation() {
        // Fewer images than calibrated on: the checking images repeat the first ones.
        while probe_x.len() < 2 * probe_n * per {
            let n = probe_x.len().min(2 * probe_n * per - probe_x.len());
            probe_x.extend_from_within(..n);
        }
        let check = probe_x.split_off(probe_n * per);
        let graph = (probe_n != batch)
            .then(|| {
                clf.model.lower_with(
                    probe_n,
                    afp_engine::passes::PassOptions {
                        fold_batchnorm: q.fold_bn,
                    },
                )
            })
            .transpose()?;
        Some(afp_quant::ProbeImages {
            graph,
            input: probe_x,
            check: Some(check),
            threads,
        })
    } else {
        None
    };
    let sp = common::spinner(&format!("search {} layers", layers.len()), quiet);
    let (lp, codes, mut diag) = pool
        .install(|| afp_quant::plan_layers_probed(&g, &layers, &stats, &opts, probe.as_ref()))
        .map_err(anyhow::Error::msg)?;
    sp.finish_and_clear();
    diag.calibration_seconds = Some(calibration_seconds);
    diag.sensitivity_images = probe.is_some().then_some(probe_n);
    let totals = afp_quant::totals(&lp);
    let plan = Plan {
        afpq_plan_version: afp_quant::plan::PLAN_VERSION,
        // Absolute, so the plan can be evaluated from any folder.
        model: std::fs::canonicalize(model_path)
            .unwrap_or_else(|_| model_path.to_path_buf())
            .display()
            .to_string(),
        model_bytes: std::fs::metadata(model_path).map(|m| m.len()).unwrap_or(0),
        options: q.describe(w),
        calibration: idx
            .iter()
            .map(|&i| ds.samples[i].file.display().to_string())
            .collect(),
        layers: lp,
        totals,
    };
    Ok((QuantizedModel { plan, codes }, diag))
}

/// Writes the `.afp` file of `q` (quantized from `model`) with the model card at `card`.
pub fn write_afp(
    output: &Path,
    model: &afp_engine::Model,
    q: &QuantizedModel,
    card: Option<&Path>,
) -> Result<afp_quant::afpfile::FileSizes> {
    // The card goes into the file as given, so the model carries its preprocessing.
    let card_json = match card {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(anyhow::Error::from)
                .and_then(|t| Ok(serde_json::from_str::<serde_json::Value>(&t)?))
                .with_context(|| format!("reading model card {}", p.display()))?,
        ),
        None => None,
    };
    afp_quant::afpfile::write(output, &model.proto, q, card_json.as_ref())
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("writing {}", output.display()))
}

/// Writes `text` to `path` atomically (temporary file in the same folder, then rename).
pub fn write_atomic(path: &Path, text: &str) -> Result<()> {
    afp_onnx::write_atomic(path, text.as_bytes()).map_err(anyhow::Error::from)
}

pub fn run(a: &Args) -> Result<()> {
    let card = a.data.card()?;
    let path = common::model_path(a.model.as_deref(), card.as_ref())?;
    let threads = a.threads.get();
    let t = std::time::Instant::now();
    let model = common::load_model(&path)?;
    let (q, diag) = make_plan(
        &model,
        &path,
        &a.data,
        &a.w,
        &a.q,
        threads,
        a.out.no_progress(),
    )?;
    let seconds = t.elapsed().as_secs_f64();
    let plan = &q.plan;
    let report_path = a
        .report
        .clone()
        .unwrap_or_else(|| a.output.with_extension("report.json"));
    let layers: Vec<serde_json::Value> = plan
        .layers
        .iter()
        .map(|l| {
            json!({
                "node": l.node, "op": l.op, "params": l.params, "format": l.weight.format.label(), "bits": l.weight.format.bits,
                "granularity": l.weight.granularity, "offsets": l.weight.offsets, "scales": l.weight.scales,
                "objective": l.objective, "weight_sqnr_db": l.weight_sqnr_db,
                "act_format": l.act.as_ref().map(|a| a.format.label()), "act_offset": l.act.as_ref().map(|a| a.offset),
                "act_sqnr_db": l.act.as_ref().map(|a| a.sqnr_db),
                "search_evaluations": l.search_evaluations, "search_space": l.search_space,
                "sensitivity": l.sensitivity, "output_error": l.output_error,
            })
        })
        .collect();
    let evals: usize = plan.layers.iter().map(|l| l.search_evaluations).sum();
    let space: usize = plan.layers.iter().map(|l| l.search_space).sum();
    let report = json!({
        "search_evaluations": evals, "search_space": space,
        "model": plan.model, "plan": a.output.display().to_string(), "options": plan.options,
        "calibration_images": plan.calibration.len(), "totals": plan.totals, "layers": layers,
        "allocation": diag,
    });
    let sizes = write_afp(&a.output, &model, &q, a.data.card.as_deref())?;
    let mut report = report;
    report["file"] = json!(sizes);
    if let Err(e) = write_atomic(&report_path, &serde_json::to_string_pretty(&report)?) {
        // Both files or neither.
        let _ = std::fs::remove_file(&a.output);
        return Err(e);
    }
    let t = &plan.totals;
    if a.out.json {
        println!(
            "{}",
            json!({"plan": a.output.display().to_string(), "report": report_path.display().to_string(), "totals": t, "file": sizes, "seconds": seconds, "calibration_images": plan.calibration.len(), "search_evaluations": evals, "search_space": space, "allocation": {"sensitivity_images": diag.sensitivity_images, "proxy_rank_correlation": diag.proxy_rank_correlation, "noise_level": diag.noise_level, "calibration_seconds": diag.calibration_seconds, "candidate_gptq_seconds": diag.candidate_gptq_seconds, "output_error_seconds": diag.output_error_seconds, "sensitivity_seconds": diag.sensitivity_seconds}})
        );
    } else {
        println!(
            "{} layers, {} parameters, average {:.3} weight bits{}",
            t.layers,
            t.params,
            t.avg_weight_bits,
            t.avg_act_bits
                .map(|b| format!(", {b:.3} activation bits"))
                .unwrap_or_default()
        );
        println!(
            "quantized weights {} bytes (FP32 {} bytes, {:.2}x smaller)",
            t.quantized_weight_bytes,
            t.fp32_weight_bytes,
            t.fp32_weight_bytes as f64 / t.quantized_weight_bytes.max(1) as f64
        );
        println!(
            "calibrated on {} images; {evals} weight configurations evaluated (space of the search: {space}); {seconds:.1} s",
            plan.calibration.len()
        );
        if let Some(t) = diag.sensitivity_seconds {
            println!(
                "sensitivity allocation: noise at {:.2e} relative output energy, measured on {} images; seconds: calibration {:.1}, GPTQ of every width {:.1}, output errors {:.1}, forward passes {t:.1}",
                diag.noise_level.unwrap_or(0.0),
                diag.sensitivity_images.unwrap_or(0),
                diag.calibration_seconds.unwrap_or(0.0),
                diag.candidate_gptq_seconds.unwrap_or(0.0),
                diag.output_error_seconds.unwrap_or(0.0),
            );
        }
        if let Some(r) = diag.proxy_rank_correlation {
            println!(
                "proxy check: rank correlation {r:.3} between predicted and measured KL over {} (layer, width) pairs",
                diag.proxy_check.len()
            );
        }
        println!(
            "wrote {} ({} bytes: {} of packed weights, {} of other tensors, {:.2}% overhead) and {}",
            a.output.display(),
            sizes.file_bytes,
            sizes.packed_weight_bytes,
            sizes.unquantized_bytes,
            100.0 * sizes.overhead(),
            report_path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// 32 images up to 1 GMAC per image (EfficientNet-Lite0, MobileNet-v2, ResNet-8), then
    /// fewer, never below 8 (ResNet-50's 4.1 GMAC).
    #[test]
    fn sensitivity_images_follow_the_model_cost() {
        let f = super::sensitivity_images_for;
        assert_eq!(f(12.5e6), 32);
        assert_eq!(f(0.39e9), 32);
        assert_eq!(f(1e9), 32);
        assert_eq!(f(2e9), 16);
        assert_eq!(f(3e9), 10);
        assert_eq!(f(4.09e9), 8);
        assert_eq!(f(20e9), 8);
        assert_eq!(f(0.0), 32);
    }
}

//! Per-layer configuration search and model-wide bit allocation.

use crate::calib::InputStats;
use crate::plan::{ActPlan, NumFormat, WeightPlan};
use crate::weights::{self, WeightView};
use afp_format::offset::{self, OffsetRule};
use afp_format::{Format, Granularity, ZeroMode};
use std::str::FromStr;

/// A family of formats compared through the same pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// AFP: every E/M split of the bit-width, per-layer (or per-channel) offsets.
    Afp,
    /// Symmetric integer with MSE-optimal real scales.
    Int,
    /// A standard float format (its own E/M split) with AFP's power-of-two offsets.
    Fixed(Format),
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Family, String> {
        match s {
            "afp" => Ok(Family::Afp),
            "int" => Ok(Family::Int),
            "fp8-e4m3" | "fp8-e5m2" | "fp6-e3m2" | "fp6-e2m3" | "fp4-e2m1" => Ok(Family::Fixed(s.parse::<Format>().map_err(|e| e.to_string())?)),
            _ => Err(format!("unknown format family {s:?}: afp, int, fp8-e4m3, fp8-e5m2, fp6-e3m2, fp6-e2m3, fp4-e2m1")),
        }
    }
}

impl Family {
    /// Weight formats of `bits` bits in this family (a fixed format ignores `bits`).
    pub fn candidates(&self, bits: u32, zero_mode: ZeroMode) -> Vec<NumFormat> {
        match self {
            Family::Afp => (0..bits)
                .filter_map(|e| Format::new(true, e, bits - 1 - e, zero_mode).ok())
                .map(NumFormat::afp)
                .collect(),
            Family::Int => vec![NumFormat::int(bits)],
            Family::Fixed(f) => vec![NumFormat::afp(f.with_zero_mode(zero_mode))],
        }
    }
    pub fn fixed_bits(&self) -> Option<u32> {
        match self {
            Family::Fixed(f) => Some(f.bits()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// The paper's: KL divergence between original and quantized weight distributions.
    Kl,
    /// Relative squared weight error.
    Mse,
    /// Relative squared error of the layer's output on calibration inputs.
    Output,
}

impl FromStr for Objective {
    type Err = String;
    fn from_str(s: &str) -> Result<Objective, String> {
        match s {
            "kl" => Ok(Objective::Kl),
            "mse" => Ok(Objective::Mse),
            "output" => Ok(Objective::Output),
            _ => Err(format!("unknown objective {s:?}: kl, mse, output")),
        }
    }
}

/// How a layer's configuration is searched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Every E/M split, each group's offset by the offset rule: exact for a per-layer objective.
    Exhaustive,
    /// Bayesian optimization over (E/M split, offset shift below cover), as the paper did.
    Bayes,
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Strategy, String> {
        match s {
            "exhaustive" => Ok(Strategy::Exhaustive),
            "bayes" => Ok(Strategy::Bayes),
            _ => Err(format!("unknown search {s:?}: exhaustive, bayes")),
        }
    }
}

/// Offset shifts below `cover` that the Bayesian search explores.
pub const BAYES_SHIFTS: i32 = 5;

#[derive(Debug, Clone, Copy)]
pub struct SearchOptions {
    pub strategy: Strategy,
    pub family: Family,
    pub granularity: Granularity,
    pub objective: Objective,
    /// Weight of the hardware-cost term.
    pub penalty: f64,
    pub offset_rule: OffsetRule,
    pub zero_mode: ZeroMode,
    /// Only formats the packed engine runs on its 8-bit integer kernels (see
    /// [`fits_int8_kernels`]).
    pub int8_kernels: bool,
}

/// Largest weight integer `|n|` of the 8-bit kernels: `vpmaddubsw` adds two u8 x i8 products
/// in i16, exact while `2 * 255 * |n| <= 32767`.
pub const INT8_KERNEL_WEIGHT_MAX: f64 = 64.0;

/// Whether a format's integers fit the packed engine's 8-bit kernels: weights up to
/// [`INT8_KERNEL_WEIGHT_MAX`], activations in u8 (unsigned) or i8 (signed, stored shifted).
pub fn fits_int8_kernels(f: &NumFormat, weight: bool) -> bool {
    // The kernels compute in the Subnormal zero mode's integer view.
    if f.format()
        .is_some_and(|ff| ff.zero_mode() != ZeroMode::Subnormal)
    {
        return false;
    }
    let Some(bound) = f.int_bound() else {
        return false;
    };
    let signed = !matches!(f.name, crate::plan::FormatName::Afp { signed: false, .. });
    if weight {
        bound <= INT8_KERNEL_WEIGHT_MAX
    } else if signed {
        bound <= 127.0
    } else {
        bound <= 255.0
    }
}

/// Relative hardware cost of a multiply in a format: the mantissa multiplier grows with
/// (M+1)^2, the exponent adder and the shifter with E; normalized to an 8-bit integer
/// multiplier (M = 7, E = 0: 64).
pub fn hw_cost(f: &NumFormat) -> f64 {
    let (e, m) = match f.name {
        crate::plan::FormatName::Afp { e, m, .. } => (e as f64, m as f64),
        crate::plan::FormatName::Int { bits } => (0.0, bits as f64 - 1.0),
    };
    ((m + 1.0).powi(2) + 2.0 * e) / 64.0
}

/// One evaluated weight configuration.
#[derive(Debug, Clone)]
pub struct WeightChoice {
    pub plan: WeightPlan,
    pub decoded: Vec<f32>,
    /// Objective plus penalty; what the search minimizes.
    pub score: f64,
    pub objective: f64,
    pub sqnr_db: Option<f64>,
    /// Configurations evaluated, and how many an exhaustive search of the same space would.
    pub evaluations: usize,
    pub space: usize,
}

/// Relative output error of `decoded` against `w` on the calibration input vectors.
pub fn output_error(w: &WeightView, decoded: &[f32], stats: &InputStats) -> f64 {
    let groups = stats.patches.len().max(1);
    let per_group = w.channels / groups;
    let k = w.reduction;
    let (mut err, mut sig) = (0f64, 0f64);
    for c in 0..w.channels {
        let g = c / per_group.max(1);
        let wc = &w.data[c * k..(c + 1) * k];
        let qc = &decoded[c * k..(c + 1) * k];
        for x in stats.patches[g.min(groups - 1)].chunks_exact(k) {
            let (mut a, mut b) = (0f32, 0f32);
            for i in 0..k {
                a += wc[i] * x[i];
                b += (wc[i] - qc[i]) * x[i];
            }
            sig += (a as f64).powi(2);
            err += (b as f64).powi(2);
        }
    }
    if sig == 0.0 {
        0.0
    } else {
        err / sig
    }
}

pub fn evaluate(
    w: &WeightView,
    stats: Option<&InputStats>,
    format: NumFormat,
    o: &SearchOptions,
) -> Result<WeightChoice, String> {
    let q = weights::quantize(w, format, o.granularity, o.offset_rule)?;
    score(w, stats, format, q, o)
}

/// Scores quantized weights by the objective plus the hardware-cost penalty.
fn score(
    w: &WeightView,
    stats: Option<&InputStats>,
    format: NumFormat,
    q: (WeightPlan, Vec<f32>),
    o: &SearchOptions,
) -> Result<WeightChoice, String> {
    let (plan, decoded) = q;
    let objective = match (o.objective, stats) {
        (Objective::Kl, _) => weights::kl_divergence(&w.data, &decoded),
        (Objective::Mse, _) => weights::relative_mse(&w.data, &decoded),
        (Objective::Output, Some(s)) if s.patch_count > 0 => output_error(w, &decoded, s),
        (Objective::Output, _) => return Err("the output objective needs calibration data".into()),
    };
    let sqnr_db = Some(weights::sqnr_db(&w.data, &decoded)).filter(|v| v.is_finite());
    Ok(WeightChoice {
        score: objective + o.penalty * hw_cost(&format),
        objective,
        sqnr_db,
        plan,
        decoded,
        evaluations: 1,
        space: 1,
    })
}

/// The weight formats of `bits` bits the search may choose: the family's candidates, only
/// those the 8-bit integer kernels run with `int8_kernels` (none, at some widths).
pub fn weight_formats(bits: u32, o: &SearchOptions) -> Vec<NumFormat> {
    let mut formats = o.family.candidates(bits, o.zero_mode);
    if o.int8_kernels {
        formats.retain(|f| fits_int8_kernels(f, true));
    }
    formats
}

/// The best configuration of `bits` bits. Exhaustive: every candidate of the family
/// (exact per layer). Bayes (AFP family): Bayesian optimization over the E/M splits and offset
/// shifts; the choice records how many configurations it evaluated.
pub fn best_weights(
    w: &WeightView,
    stats: Option<&InputStats>,
    bits: u32,
    o: &SearchOptions,
) -> Result<WeightChoice, String> {
    let formats = weight_formats(bits, o);
    if formats.is_empty() {
        return Err(format!(
            "no {bits}-bit weight format of this family fits the 8-bit integer kernels"
        ));
    }
    if o.strategy == Strategy::Bayes && o.family == Family::Afp && formats.len() > 1 {
        let ne = formats.len();
        let mut points = Vec::new();
        let mut configs = Vec::new();
        for (i, f) in formats.iter().enumerate() {
            for d in 0..BAYES_SHIFTS {
                points.push([
                    i as f64 / (ne - 1) as f64,
                    d as f64 / (BAYES_SHIFTS - 1) as f64,
                ]);
                configs.push((*f, -d));
            }
        }
        let mut cache: Vec<Option<WeightChoice>> = vec![None; configs.len()];
        let mut failure = None;
        let idx = |e: usize, d: i32| e * BAYES_SHIFTS as usize + d as usize;
        let initial = [idx(ne / 2, 1), idx(0, 0), idx(ne - 1, 2)];
        let r = crate::bayes::minimize(&points, &initial, configs.len(), |i| {
            let (f, shift) = configs[i];
            match weights::quantize_shifted(w, f, o.granularity, shift)
                .and_then(|q| score(w, stats, f, q, o))
            {
                Ok(c) => {
                    let s = c.score;
                    cache[i] = Some(c);
                    s
                }
                Err(e) => {
                    failure = Some(e);
                    f64::INFINITY
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let mut best = cache[r.best].take().ok_or("no configuration evaluated")?;
        best.evaluations = r.evaluations;
        best.space = configs.len();
        return Ok(best);
    }
    let mut best: Option<WeightChoice> = None;
    for f in &formats {
        let c = evaluate(w, stats, *f, o)?;
        if best.as_ref().is_none_or(|b| c.score < b.score) {
            best = Some(c);
        }
    }
    let mut best = best.ok_or_else(|| format!("no {bits}-bit format in this family"))?;
    best.evaluations = formats.len();
    best.space = formats.len();
    Ok(best)
}

/// Activation format and offset for a layer input of `bits` bits: unsigned (AFPu) when the
/// input was never negative in calibration; every E/M split (E = 0 only, for the int family),
/// offsets from `cover` down to 6 below it (clipping), least squared error on the sample.
pub fn best_activation(
    stats: &InputStats,
    bits: u32,
    family: Family,
    zero_mode: ZeroMode,
    penalty: f64,
    int8_kernels: bool,
) -> Result<ActPlan, String> {
    activation_candidates(stats, bits, family, zero_mode, penalty, int8_kernels)?
        .into_iter()
        .next()
        .map(|c| c.1)
        .ok_or_else(|| "no activation format".into())
}

/// Every activation configuration of `bits` bits (as [`best_activation`] searches them) with
/// its score (relative squared error on the sample plus penalty), best first.
pub fn activation_candidates(
    stats: &InputStats,
    bits: u32,
    family: Family,
    zero_mode: ZeroMode,
    penalty: f64,
    int8_kernels: bool,
) -> Result<Vec<(f64, ActPlan)>, String> {
    let unsigned = stats.min >= 0.0;
    let formats: Vec<Format> = match family {
        Family::Fixed(f) => vec![f.with_zero_mode(zero_mode)],
        Family::Int => vec![Format::new(
            !unsigned,
            0,
            if unsigned { bits } else { bits - 1 },
            zero_mode,
        )
        .map_err(|e| e.to_string())?],
        Family::Afp => (0..=bits)
            .filter_map(|e| {
                let m = (bits + unsigned as u32).checked_sub(1 + e)?;
                Format::new(!unsigned, e, m, zero_mode).ok()
            })
            .collect(),
    };
    let formats: Vec<Format> = formats
        .into_iter()
        .filter(|&f| !int8_kernels || fits_int8_kernels(&NumFormat::afp(f), false))
        .collect();
    if formats.is_empty() {
        return Err(format!(
            "no {bits}-bit activation format of this family fits the 8-bit integer kernels"
        ));
    }
    let absmax = stats.min.abs().max(stats.max.abs());
    if !absmax.is_finite() {
        return Err("non-finite activations in calibration".into());
    }
    let signal: f64 = stats.sample.iter().map(|&v| (v as f64).powi(2)).sum();
    let mut out: Vec<(f64, ActPlan)> = Vec::new();
    for f in formats {
        let top = offset::cover_for(f, absmax);
        let (lo, _) = f.offset_range();
        let errors = offset::errors_by_offset(f, (top - 6).max(lo)..=top, &stats.sample)
            .map_err(|e| e.to_string())?;
        for (t, err) in errors {
            let rel = if signal > 0.0 { err / signal } else { 0.0 };
            let nf = NumFormat::afp(f);
            let score = rel + penalty * hw_cost(&nf);
            let sqnr_db = (rel > 0.0).then(|| -10.0 * rel.log10());
            out.push((
                score,
                ActPlan {
                    format: nf,
                    offset: t,
                    calib_min: stats.min,
                    calib_max: stats.max,
                    sqnr_db,
                },
            ));
        }
    }
    // Stable: among equal scores the first tried (smaller E, larger offset) stays first.
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(out)
}

/// Chooses one option per layer to minimize the summed score with `sum(weight_l * bits_l)
/// <= budget`. `options[l]` lists (bits, score) in increasing bits. Greedy on the best score
/// decrease per extra bit-weight, from the cheapest option of every layer: the usual
/// multiple-choice knapsack heuristic, exact when each layer's scores are convex in bits.
pub fn allocate(
    options: &[Vec<(u32, f64)>],
    weights: &[usize],
    budget: f64,
) -> Result<Vec<usize>, String> {
    let mut pick = vec![0usize; options.len()];
    let mut used: f64 = options
        .iter()
        .zip(weights)
        .map(|(o, &w)| o[0].0 as f64 * w as f64)
        .sum();
    if used > budget + 1e-9 {
        return Err(format!(
            "the budget is below the smallest bit-width of every layer ({:.3} needed)",
            used / weights.iter().sum::<usize>() as f64
        ));
    }
    loop {
        let mut best: Option<(f64, usize, usize, f64)> = None;
        for (l, opts) in options.iter().enumerate() {
            for j in pick[l] + 1..opts.len() {
                let extra = (opts[j].0 - opts[pick[l]].0) as f64 * weights[l] as f64;
                if used + extra > budget + 1e-9 {
                    break;
                }
                let gain = (opts[pick[l]].1 - opts[j].1) / extra.max(1e-12);
                if gain > 0.0 && best.is_none_or(|b| gain > b.0 || (gain == b.0 && l < b.1)) {
                    best = Some((gain, l, j, extra));
                }
            }
        }
        match best {
            Some((_, l, j, extra)) => {
                pick[l] = j;
                used += extra;
            }
            None => return Ok(pick),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_respects_the_budget_and_favours_big_gains() {
        let options = vec![
            vec![(4, 1.0), (5, 0.5), (6, 0.2), (8, 0.0)],
            vec![(4, 0.1), (5, 0.09), (6, 0.08), (8, 0.0)],
        ];
        let w = [100, 100];
        let pick = allocate(&options, &w, 5.0 * 200.0).unwrap();
        let bits: Vec<u32> = pick
            .iter()
            .enumerate()
            .map(|(l, &j)| options[l][j].0)
            .collect();
        assert!(bits[0] * 100 + bits[1] * 100 <= 1000);
        assert_eq!(bits, vec![6, 4]);
        assert!(allocate(&options, &w, 3.0 * 200.0).is_err());
    }

    #[test]
    fn hw_cost_grows_with_mantissa() {
        let a = NumFormat::afp(Format::signed(4, 3).unwrap());
        let b = NumFormat::afp(Format::signed(2, 5).unwrap());
        assert!(hw_cost(&b) > hw_cost(&a));
        assert_eq!(hw_cost(&NumFormat::int(8)), 1.0);
    }
}

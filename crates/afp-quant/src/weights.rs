//! Weight tensors of quantizable layers: their `[out channels, reduction]` view, quantizing
//! them with a format (AFP with power-of-two offsets, or INT with real MSE-optimal scales),
//! and the error measures the search compares.

use crate::plan::{NumFormat, WeightPlan};
use afp_engine::ir::{Graph, Node, Op};
use afp_format::offset::OffsetRule;
use afp_format::tensor::{GroupLayout, QuantizedTensor};
use afp_format::{Granularity, Grid, Lut, Rounder};

/// A layer's weights seen as `[channels, reduction]`, row-major.
#[derive(Debug, Clone)]
pub struct WeightView {
    pub data: Vec<f32>,
    pub channels: usize,
    pub reduction: usize,
    /// The graph stores it transposed (`[K, N]`: Gemm without transB, MatMul).
    pub transposed: bool,
    pub shape: Vec<usize>,
}

impl WeightView {
    /// The weight of a Conv, Gemm or 2-D MatMul node with a constant weight.
    pub fn of(g: &Graph, n: &Node) -> Option<WeightView> {
        let w = *n.inputs.get(1)?;
        let data = g.const_f32(w)?;
        let shape = g.values[w].shape.clone();
        let transposed = match &n.op {
            Op::Conv { .. } => false,
            Op::Gemm { trans_b, .. } => !trans_b,
            Op::MatMul { .. } if shape.len() == 2 => true,
            _ => return None,
        };
        if transposed {
            let (k, nn) = (shape[0], shape[1]);
            let mut t = vec![0f32; data.len()];
            for i in 0..k {
                for j in 0..nn {
                    t[j * k + i] = data[i * nn + j];
                }
            }
            Some(WeightView {
                data: t,
                channels: nn,
                reduction: k,
                transposed,
                shape,
            })
        } else {
            let channels = shape[0];
            Some(WeightView {
                data: data.to_vec(),
                channels,
                reduction: data.len() / channels.max(1),
                transposed,
                shape,
            })
        }
    }

    /// Back to the graph's layout.
    pub fn to_graph_layout(&self, v: &[f32]) -> Vec<f32> {
        if !self.transposed {
            return v.to_vec();
        }
        let (nn, k) = (self.channels, self.reduction);
        let mut t = vec![0f32; v.len()];
        for j in 0..nn {
            for i in 0..k {
                t[i * nn + j] = v[j * k + i];
            }
        }
        t
    }

    pub fn granularity_groups(&self, g: Granularity) -> GroupLayout {
        GroupLayout::new(g, &[self.channels, self.reduction], self.data.len())
            .expect("shape matches")
    }
}

pub fn granularity_name(g: Granularity) -> String {
    g.to_string()
}

/// Quantizes weights with `format`; returns the plan entry and the decoded weights
/// (`[channels, reduction]` layout).
pub fn quantize(
    w: &WeightView,
    format: NumFormat,
    gran: Granularity,
    rule: OffsetRule,
) -> Result<(WeightPlan, Vec<f32>), String> {
    match format.format() {
        Some(f) => {
            let q = QuantizedTensor::quantize(&w.data, &[w.channels, w.reduction], f, gran, rule)
                .map_err(|e| e.to_string())?;
            Ok(afp_plan(format, gran, q))
        }
        None => {
            let layout = w.granularity_groups(gran);
            let bits = format.bits;
            let mut scales = Vec::with_capacity(layout.groups());
            let mut dec = vec![0f32; w.data.len()];
            for gi in 0..layout.groups() {
                let r = layout.group_range(gi);
                let s = int_mse_scale(&w.data[r.clone()], bits);
                int_round(&w.data[r.clone()], s, bits, &mut dec[r]);
                scales.push(s);
            }
            Ok((
                WeightPlan {
                    format,
                    granularity: granularity_name(gran),
                    offsets: vec![],
                    scales,
                },
                dec,
            ))
        }
    }
}

/// AFP weights with every group's offset at its `cover` offset plus `shift` (`shift <= 0`
/// clips): the parametrization the Bayesian search explores.
pub fn quantize_shifted(
    w: &WeightView,
    format: NumFormat,
    gran: Granularity,
    shift: i32,
) -> Result<(WeightPlan, Vec<f32>), String> {
    let f = format
        .format()
        .ok_or("shifted offsets apply to AFP formats")?;
    let layout = w.granularity_groups(gran);
    let (lo, hi) = f.offset_range();
    let offsets: Vec<i32> = (0..layout.groups())
        .map(|g| {
            afp_format::offset::cover(f, &w.data[layout.group_range(g)])
                .map(|t| (t + shift).clamp(lo, hi))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let q = QuantizedTensor::with_offsets(&w.data, &[w.channels, w.reduction], f, layout, offsets)
        .map_err(|e| e.to_string())?;
    Ok(afp_plan(format, gran, q))
}

/// The plan entry and decoded values of AFP-quantized weights.
fn afp_plan(format: NumFormat, gran: Granularity, q: QuantizedTensor) -> (WeightPlan, Vec<f32>) {
    let dec = q.decode();
    let plan = WeightPlan {
        format,
        granularity: granularity_name(gran),
        offsets: q.offsets,
        scales: vec![],
    };
    (plan, dec)
}

/// The group layout of a plan entry over `[channels, reduction]` weights.
fn plan_layout(p: &WeightPlan, channels: usize, reduction: usize) -> Result<GroupLayout, String> {
    let gran: Granularity = p
        .granularity
        .parse()
        .map_err(|e: afp_format::FormatError| e.to_string())?;
    let layout = GroupLayout::new(gran, &[channels, reduction], channels * reduction)
        .map_err(|e| e.to_string())?;
    let n = match p.format.format() {
        Some(_) => {
            if !p.scales.is_empty() && p.scales.len() != p.offsets.len() {
                return Err(format!(
                    "{} real scales for {} offsets",
                    p.scales.len(),
                    p.offsets.len()
                ));
            }
            if let Some(s) = p.scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                return Err(format!("real scale {s} is not finite and positive"));
            }
            p.offsets.len()
        }
        None => p.scales.len(),
    };
    if n != layout.groups() {
        return Err(format!(
            "{n} offsets or scales for {} groups of {} weights",
            layout.groups(),
            p.granularity
        ));
    }
    Ok(layout)
}

/// Candidates of a real scale on top of a power-of-two offset: `2^(j/16)`, `j = -16..=16`
/// (the grids between the offsets below and above, 1 among them).
const REAL_SCALE_STEPS: i32 = 16;

/// An AFP plan entry with a real scale per group on top of its offsets (`--scale real`): each
/// group's scale is the candidate `2^(j/16)`, `|j| <= 16`, whose grid gives the least squared
/// error under nearest rounding (1, the plain offset, is a candidate, so the error never
/// grows). Returns the plan and the decoded weights. INT plans are returned as they are.
pub fn with_real_scales(
    w: &WeightView,
    p: WeightPlan,
    decoded: Vec<f32>,
) -> Result<(WeightPlan, Vec<f32>), String> {
    let Some(f) = p.format.format() else {
        return Ok((p, decoded));
    };
    let layout = plan_layout(&p, w.channels, w.reduction)?;
    let candidates: Vec<f32> = (-REAL_SCALE_STEPS..=REAL_SCALE_STEPS)
        .map(|j| 2f32.powf(j as f32 / REAL_SCALE_STEPS as f32))
        .collect();
    let mut scales = Vec::with_capacity(p.offsets.len());
    let mut out = decoded;
    // Per candidate, a chunk of the group rounded on its scaled grid.
    const CHUNK: usize = 128;
    let mut rounded = vec![[0f32; CHUNK]; candidates.len()];
    for (gi, &t) in p.offsets.iter().enumerate() {
        let r = layout.group_range(gi);
        let rounder = Rounder::new(&Grid::new(f, t).map_err(|e| e.to_string())?);
        let x = &w.data[r.clone()];
        // `v / s` rounded on the grid, times `s` (bulk encoder).
        let round_scaled = |s: f32, xs: &[f32], buf: &mut [f32]| -> Result<(), String> {
            buf.iter_mut().zip(xs).for_each(|(b, &v)| *b = v / s);
            rounder.round_slice(buf).map_err(|e| e.to_string())?;
            buf.iter_mut().for_each(|b| *b *= s);
            Ok(())
        };
        // Each candidate's squared error, summed in order; the candidates' sums advance
        // together a chunk at a time (independent chains of additions).
        let mut errs = vec![0f64; candidates.len()];
        for xc in x.chunks(CHUNK) {
            for (&s, buf) in candidates.iter().zip(rounded.iter_mut()) {
                round_scaled(s, xc, &mut buf[..xc.len()])?;
            }
            for (i, &v) in xc.iter().enumerate() {
                for (e, buf) in errs.iter_mut().zip(&rounded) {
                    *e += ((buf[i] - v) as f64).powi(2);
                }
            }
        }
        let mut best = (f64::INFINITY, 1.0f32);
        for (j, (&s, &e)) in (-REAL_SCALE_STEPS..).zip(candidates.iter().zip(&errs)) {
            // On a tie the plain offset (j = 0) wins.
            if e < best.0 || (e == best.0 && j == 0) {
                best = (e, s);
            }
        }
        let s = best.1;
        round_scaled(s, x, &mut out[r])?;
        scales.push(s);
    }
    Ok((WeightPlan { scales, ..p }, out))
}

/// The codes (one per weight, `[channels, reduction]` layout) of weights that lie on their
/// plan's grid, as the search returns them. AFP codes are the format's; INT codes are the
/// integer in two's complement at the format's width. Fails if a value is off the grid.
pub fn encode_decoded(
    p: &WeightPlan,
    decoded: &[f32],
    channels: usize,
    reduction: usize,
) -> Result<Vec<u8>, String> {
    let layout = plan_layout(p, channels, reduction)?;
    let mut codes = vec![0u8; decoded.len()];
    match p.format.format() {
        Some(f) => {
            for (gi, &t) in p.offsets.iter().enumerate() {
                let r = layout.group_range(gi);
                let grid = Grid::new(f, t).map_err(|e| e.to_string())?;
                let res = match p.scales.get(gi) {
                    Some(&s) => {
                        let unscaled: Vec<f32> = decoded[r.clone()].iter().map(|v| v / s).collect();
                        grid.encode_slice(&unscaled, &mut codes[r])
                    }
                    None => grid.encode_slice(&decoded[r.clone()], &mut codes[r]),
                };
                res.map_err(|e| e.to_string())?;
            }
        }
        None => {
            let mask = ((1u32 << p.format.bits) - 1) as u8;
            for (gi, &s) in p.scales.iter().enumerate() {
                let r = layout.group_range(gi);
                for (c, &v) in codes[r.clone()].iter_mut().zip(&decoded[r]) {
                    let q = if s > 0.0 { (v / s).round() as i32 } else { 0 };
                    *c = (q as u8) & mask;
                }
            }
        }
    }
    // Values off the grid would silently change: check the round trip.
    let back = decode_codes(p, &codes, channels, reduction)?;
    if let Some(i) = (0..decoded.len()).find(|&i| back[i] != decoded[i]) {
        return Err(format!(
            "weight {i} ({}) is not a value of its format (internal error)",
            decoded[i]
        ));
    }
    Ok(codes)
}

/// Weights (`[channels, reduction]` layout) from their codes and plan entry.
pub fn decode_codes(
    p: &WeightPlan,
    codes: &[u8],
    channels: usize,
    reduction: usize,
) -> Result<Vec<f32>, String> {
    if codes.len() != channels * reduction {
        return Err(format!(
            "{} codes for {channels} x {reduction} weights",
            codes.len()
        ));
    }
    let layout = plan_layout(p, channels, reduction)?;
    let mut out = vec![0f32; codes.len()];
    match p.format.format() {
        Some(f) => {
            for (gi, &t) in p.offsets.iter().enumerate() {
                let r = layout.group_range(gi);
                let grid = Grid::new(f, t).map_err(|e| format!("group {gi}: {e}"))?;
                Lut::new(&grid).decode_slice(&codes[r.clone()], &mut out[r.clone()]);
                if let Some(&s) = p.scales.get(gi) {
                    out[r].iter_mut().for_each(|v| *v *= s);
                }
            }
        }
        None => {
            let bits = p.format.bits;
            if !(2..=8).contains(&bits) {
                return Err(format!("INT{bits} is not a supported width"));
            }
            let qmax = (1i32 << (bits - 1)) - 1;
            let shift = 32 - bits;
            for (gi, &s) in p.scales.iter().enumerate() {
                if !(s.is_finite() && s >= 0.0) {
                    return Err(format!("group {gi}: scale {s} is not finite and >= 0"));
                }
                let r = layout.group_range(gi);
                for (o, &c) in out[r.clone()].iter_mut().zip(&codes[r]) {
                    // Sign-extend the `bits`-bit two's complement code.
                    let q = ((c as i32) << shift) >> shift;
                    if q < -qmax {
                        return Err(format!("group {gi}: code {c} is outside INT{bits}"));
                    }
                    *o = q as f32 * s;
                }
            }
        }
    }
    Ok(out)
}

fn int_round(x: &[f32], scale: f32, bits: u32, out: &mut [f32]) {
    let qmax = ((1i32 << (bits - 1)) - 1) as f32;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = int_level(v, scale, qmax);
    }
}

/// The nearest level `scale * n`, `|n| <= qmax`, of a symmetric integer grid (0 for a
/// non-positive scale).
fn int_level(v: f32, scale: f32, qmax: f32) -> f32 {
    if scale > 0.0 {
        (v / scale).round_ties_even().clamp(-qmax, qmax) * scale
    } else {
        0.0
    }
}

/// The symmetric integer scale with the least squared error: `absmax/qmax` times a clipping
/// ratio searched over 0.30..=1.00 in steps of 0.01.
pub fn int_mse_scale(x: &[f32], bits: u32) -> f32 {
    let absmax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
    if absmax == 0.0 {
        return 1.0;
    }
    let qmax = ((1i32 << (bits - 1)) - 1) as f32;
    let mut best = (f64::INFINITY, absmax / qmax);
    let mut tmp = vec![0f32; x.len()];
    for r in (30..=100).rev() {
        let s = absmax * r as f32 / 100.0 / qmax;
        int_round(x, s, bits, &mut tmp);
        let e: f64 = x
            .iter()
            .zip(&tmp)
            .map(|(&a, &b)| ((a - b) as f64).powi(2))
            .sum();
        if e < best.0 {
            best = (e, s);
        }
    }
    best.1
}

/// Relative squared error `sum (w-q)^2 / sum w^2`.
pub fn relative_mse(w: &[f32], q: &[f32]) -> f64 {
    let (mut e, mut s) = (0f64, 0f64);
    for (&a, &b) in w.iter().zip(q) {
        e += ((a - b) as f64).powi(2);
        s += (a as f64).powi(2);
    }
    if s == 0.0 {
        0.0
    } else {
        e / s
    }
}

/// Signal-to-quantization-noise ratio in dB.
pub fn sqnr_db(w: &[f32], q: &[f32]) -> f64 {
    let r = relative_mse(w, q);
    if r == 0.0 {
        f64::INFINITY
    } else {
        -10.0 * r.log10()
    }
}

/// KL divergence between the distribution of `w` and that of its quantized values, on a
/// 2048-bin histogram over `[-absmax, absmax]`; the quantized mass of each level is spread
/// evenly over the non-empty original bins that round to it (as TensorRT's calibrator does),
/// so the measure sees both rounding within a level's range and clipping.
pub fn kl_divergence(w: &[f32], q: &[f32]) -> f64 {
    const BINS: usize = 2048;
    let absmax = w.iter().fold(0f32, |a, &v| a.max(v.abs()));
    if absmax == 0.0 || w.is_empty() {
        return 0.0;
    }
    let bin = |v: f32| (((v / absmax + 1.0) * 0.5 * BINS as f32) as usize).min(BINS - 1);
    let mut p = vec![0f64; BINS];
    // For each original bin, the level its first member goes to: bins are narrow, so the
    // members of one bin almost always share a level.
    let mut level_of_bin: Vec<Option<f32>> = vec![None; BINS];
    for (&a, &b) in w.iter().zip(q) {
        let i = bin(a);
        p[i] += 1.0;
        level_of_bin[i].get_or_insert(b);
    }
    let mut mass: std::collections::HashMap<u32, (f64, f64)> = std::collections::HashMap::new();
    for i in 0..BINS {
        if let Some(l) = level_of_bin[i] {
            let e = mass.entry(l.to_bits()).or_default();
            e.0 += p[i];
            e.1 += 1.0;
        }
    }
    let n = w.len() as f64;
    let mut kl = 0.0;
    for i in 0..BINS {
        if p[i] == 0.0 {
            continue;
        }
        let l = level_of_bin[i].expect("non-empty bins have a level");
        let (m, cnt) = mass[&l.to_bits()];
        let qi = m / cnt / n;
        let pi = p[i] / n;
        kl += pi * (pi / qi).ln();
    }
    kl
}

/// Rounds one value of output channel `c` to its grid under plan entry `p` (nearest; what
/// GPTQ calls for each weight). Tensor or channel granularity.
pub fn channel_rounder(
    p: &WeightPlan,
    channels: usize,
    reduction: usize,
) -> Result<impl Fn(usize, f32) -> f32 + Sync, String> {
    let layout = plan_layout(p, channels, reduction)?;
    let per_channel = match layout.groups() {
        1 => false,
        g if g == channels => true,
        g => {
            return Err(format!(
                "GPTQ rounding needs tensor or channel granularity ({g} groups for {channels} channels)"
            ))
        }
    };
    enum Rule {
        Afp(Vec<Grid>),
        /// AFP grids with a real scale on top.
        AfpScaled(Vec<Grid>, Vec<f32>),
        Int(Vec<f32>, f32),
    }
    let rule = match p.format.format() {
        Some(f) => {
            let grids = p
                .offsets
                .iter()
                .map(|&t| Grid::new(f, t).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            if p.scales.is_empty() {
                Rule::Afp(grids)
            } else {
                Rule::AfpScaled(grids, p.scales.clone())
            }
        }
        None => Rule::Int(p.scales.clone(), ((1i32 << (p.format.bits - 1)) - 1) as f32),
    };
    Ok(move |c: usize, v: f32| {
        let g = if per_channel { c } else { 0 };
        match &rule {
            Rule::Afp(grids) => grids[g].quantize_finite(v),
            Rule::AfpScaled(grids, s) => grids[g].quantize_finite(v / s[g]) * s[g],
            Rule::Int(scales, qmax) => int_level(v, scales[g], *qmax),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_scale_is_mse_optimal_among_candidates() {
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .chain([8.0])
            .collect();
        let s = int_mse_scale(&x, 4);
        assert!(s < 8.0 / 7.0, "outlier should be clipped: {s}");
        let mut q = vec![0f32; x.len()];
        int_round(&x, s, 4, &mut q);
        let mut q2 = vec![0f32; x.len()];
        int_round(&x, 8.0 / 7.0, 4, &mut q2);
        assert!(relative_mse(&x, &q) < relative_mse(&x, &q2));
    }

    /// Real scales never raise the weight error, stay within a factor 2 of the offset, and
    /// the codes they give decode (and round under GPTQ's rounder) to the same values.
    #[test]
    fn real_scales_lower_the_error_and_round_trip() {
        let (channels, reduction) = (6, 200);
        let data: Vec<f32> = (0..channels * reduction)
            .map(|i| ((i as f32 * 0.377).sin() * (1.0 + (i / reduction) as f32)).powi(3))
            .collect();
        let w = WeightView {
            data,
            channels,
            reduction,
            transposed: false,
            shape: vec![channels, reduction],
        };
        let fmt = NumFormat::afp(afp_format::Format::signed(2, 1).unwrap());
        let (p, dec) = quantize(&w, fmt, Granularity::PerChannel, OffsetRule::Mse).unwrap();
        assert!(p.scales.is_empty());
        let (pr, decr) = with_real_scales(&w, p.clone(), dec.clone()).unwrap();
        assert_eq!(pr.offsets, p.offsets);
        assert_eq!(pr.scales.len(), channels);
        assert!(pr.scales.iter().all(|&s| (0.5..=2.0).contains(&s)));
        assert!(pr.scales.iter().any(|&s| s != 1.0), "{:?}", pr.scales);
        let err = |d: &[f32]| relative_mse(&w.data, d);
        assert!(err(&decr) < err(&dec), "{} vs {}", err(&decr), err(&dec));
        let codes = encode_decoded(&pr, &decr, channels, reduction).unwrap();
        assert_eq!(
            decode_codes(&pr, &codes, channels, reduction).unwrap(),
            decr
        );
        let round = channel_rounder(&pr, channels, reduction).unwrap();
        for (i, &v) in decr.iter().enumerate() {
            assert_eq!(round(i / reduction, v), v, "weight {i}");
        }
        // Bad scales are errors, not silent grids.
        let bad = WeightPlan {
            scales: vec![1.0; channels - 1],
            ..pr.clone()
        };
        assert!(decode_codes(&bad, &codes, channels, reduction).is_err());
        let bad = WeightPlan {
            scales: vec![0.0; channels],
            ..pr
        };
        assert!(decode_codes(&bad, &codes, channels, reduction).is_err());
    }

    #[test]
    fn kl_is_zero_for_exact_and_grows_with_coarseness() {
        let x: Vec<f32> = (0..5000).map(|i| ((i as f32) * 0.7123).sin()).collect();
        assert!(kl_divergence(&x, &x) < 1e-9);
        let f = |bits| {
            let mut q = vec![0f32; x.len()];
            int_round(&x, 1.0 / ((1 << (bits - 1)) - 1) as f32, bits, &mut q);
            kl_divergence(&x, &q)
        };
        assert!(f(3) > f(5) && f(5) > f(8), "{} {} {}", f(3), f(5), f(8));
    }
}

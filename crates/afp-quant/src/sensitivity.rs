//! Sensitivity-driven bit allocation: what a layer's quantization costs the *network*, not the
//! layer's weights.
//!
//! The cost of layer `l` at width `b` is predicted as `s_l * e_l(b)`:
//! - `e_l(b) = tr((W-Q) H (W-Q)ᵀ) / tr(W H Wᵀ)`, the relative error of the layer's output on
//!   the calibration inputs (`H = sum x xᵀ`, the Hessian GPTQ uses), with `Q` the weights as
//!   they will be rounded (nearest or GPTQ) at that width;
//! - `s_l`, measured once per layer: Gaussian noise of known relative output energy `level`
//!   is added to the layer's weights (per output channel proportional to the channel's RMS, as
//!   per-channel quantization noise is) and the increase of `KL(FP32 softmax || perturbed
//!   softmax)` on a few calibration images is divided by `level`. One forward pass per layer.
//!
//! Small output errors change the KL quadratically in amplitude, so linearly in energy: the
//! product is the first-order prediction of the KL each choice adds.

use crate::gptq::Hessian;
use crate::weights::WeightView;
use afp_engine::ir::Graph;
use afp_engine::Session;
use afp_kernels::{matmul, threads_for, MatLayout};

/// `sum_g tr(D_g H_g D_gᵀ)`: the energy of `d` (`[channels, reduction]`, channels split
/// evenly over the groups) applied to the calibration inputs, `sum ||D x||²`.
pub fn output_energy(d: &[f32], channels: usize, hessians: &[Hessian]) -> Result<f64, String> {
    let groups = hessians.len();
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err("the output error needs the input Hessians from calibration".into());
    }
    let per = channels / groups;
    let mut total = 0f64;
    for (gi, h) in hessians.iter().enumerate() {
        let k = h.k;
        let dg = d
            .get(gi * per * k..(gi + 1) * per * k)
            .ok_or_else(|| format!("{} weights for {channels} x {k}", d.len()))?;
        if per * k * k < 1 << 16 {
            for row in dg.chunks_exact(k) {
                for (i, &ri) in row.iter().enumerate() {
                    let hr = &h.h[i * k..(i + 1) * k];
                    let s: f64 = hr.iter().zip(row).map(|(&a, &b)| a as f64 * b as f64).sum();
                    total += ri as f64 * s;
                }
            }
        } else {
            let mut p = vec![0f32; per * k];
            matmul(
                per,
                k,
                k,
                &mut p,
                k,
                false,
                dg,
                MatLayout::row_major(k),
                &h.h,
                MatLayout::row_major(k),
                1.0,
                threads_for(per, k, k),
            );
            total += dg
                .iter()
                .zip(&p)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>();
        }
    }
    Ok(total.max(0.0))
}

/// `e(Q) = tr((W-Q) H (W-Q)ᵀ) / tr(W H Wᵀ)`, given `signal = tr(W H Wᵀ)`. With `means`
/// (the mean input vector of each group), the part bias correction cancels,
/// `n ||(W-Q) mean||²` per channel, is left out.
pub fn relative_output_error(
    w: &WeightView,
    decoded: &[f32],
    hessians: &[Hessian],
    signal: f64,
    means: Option<&[Vec<f32>]>,
) -> Result<f64, String> {
    if signal <= 0.0 {
        return Ok(0.0);
    }
    let d: Vec<f32> = w.data.iter().zip(decoded).map(|(a, b)| a - b).collect();
    let mut e = output_energy(&d, w.channels, hessians)?;
    if let Some(means) = means {
        let k = w.reduction.max(1);
        let per = (w.channels / means.len().max(1)).max(1);
        for (c, row) in d.chunks(k).enumerate() {
            let (g, n) = (c / per, hessians[(c / per).min(hessians.len() - 1)].samples);
            let m = &means[g.min(means.len() - 1)];
            let shift: f64 = row.iter().zip(m).map(|(&a, &b)| a as f64 * b as f64).sum();
            e -= n as f64 * shift * shift;
        }
    }
    Ok(e.max(0.0) / signal)
}

/// Standard normal numbers from a seed (splitmix64 and Box-Muller): deterministic noise.
fn gaussian(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    move || {
        let (u, v) = (next(), next());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// Noise shaped like per-channel quantization noise: white within each output channel, with
/// the channel's RMS as its scale.
fn channel_noise(w: &WeightView, seed: u64) -> Vec<f32> {
    let mut g = gaussian(seed);
    let k = w.reduction.max(1);
    let mut out = Vec::with_capacity(w.data.len());
    for row in w.data.chunks(k) {
        let rms = (row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / k as f64).sqrt() as f32;
        out.extend((0..row.len()).map(|_| rms * g()));
    }
    out
}

/// Probabilities per image from the graph's first output: as they are when every row is
/// already a distribution (a graph that ends in Softmax), else through a softmax (logits).
fn probabilities(out: &[f32], classes: usize) -> Vec<f64> {
    let rows: Vec<&[f32]> = out.chunks(classes.max(1)).collect();
    let is_dist = rows.iter().all(|r| {
        r.iter().all(|&v| v >= 0.0) && (r.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-3
    });
    let mut p = Vec::with_capacity(out.len());
    for r in rows {
        if is_dist {
            p.extend(r.iter().map(|&v| v as f64));
        } else {
            let m = r.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
            let z: f64 = r.iter().map(|&v| (v as f64 - m).exp()).sum();
            p.extend(r.iter().map(|&v| (v as f64 - m).exp() / z));
        }
    }
    p
}

/// Mean over images of `KL(p || q)`.
fn mean_kl(p: &[f64], q: &[f64], classes: usize) -> f64 {
    let rows = p.len() / classes.max(1);
    let kl: f64 = p
        .iter()
        .zip(q)
        .filter(|(&a, _)| a > 0.0)
        .map(|(&a, &b)| a * (a / b.max(1e-30)).ln())
        .sum();
    (kl / rows.max(1) as f64).max(0.0)
}

/// A session over the FP32 graph with its outputs on a batch of probe images: measures the
/// KL that replacing one layer's weights adds. The nodes before the layer do not change, so a
/// second session, run only as far as the layer, provides their values: each measurement
/// runs the graph from the layer on (half of it on average, for layers taken in order).
pub struct Probe {
    session: Session,
    /// The unperturbed graph, run as far as `base_at` nodes.
    base: Session,
    base_at: usize,
    input: Vec<f32>,
    reference: Vec<f64>,
    classes: usize,
}

impl Probe {
    /// `input`: images for `g`'s batch size. `g` must have the node order of the graph the
    /// layers index (the same model lowered with the same passes, any batch size).
    pub fn new(g: &Graph, input: Vec<f32>, threads: usize) -> Result<Probe, String> {
        let classes = g
            .outputs
            .first()
            .and_then(|&o| g.values[o].shape.last().copied())
            .ok_or("the model has no output")?;
        let mut base = Session::new(g.clone(), threads).map_err(|e| e.to_string())?;
        let out = base.run(&[&input]).map_err(|e| e.to_string())?;
        let reference = probabilities(&out[0], classes);
        Ok(Probe {
            session: Session::new(g.clone(), threads).map_err(|e| e.to_string())?,
            base_at: g.nodes.len(),
            base,
            input,
            reference,
            classes,
        })
    }

    /// The mean KL from the FP32 outputs when node `node`'s weights are `weights`
    /// (`[channels, reduction]`, the layout of `view`).
    pub fn kl_with(
        &mut self,
        node: usize,
        view: &WeightView,
        weights: &[f32],
    ) -> Result<f64, String> {
        let g = self.session.graph();
        let wid = *g
            .nodes
            .get(node)
            .and_then(|n| n.inputs.get(1))
            .ok_or("the probe graph does not match the model's layers")?;
        // The first node that reads the weights (normally `node` itself).
        let start = g
            .nodes
            .iter()
            .position(|n| n.inputs.contains(&wid))
            .unwrap_or(node);
        let end = g.nodes.len();
        if self.base_at > start {
            self.base
                .set_inputs(&[&self.input])
                .map_err(|e| e.to_string())?;
            self.base_at = 0;
        }
        self.base
            .run_nodes(self.base_at..start)
            .map_err(|e| e.to_string())?;
        self.base_at = start;
        self.session
            .copy_buffers_from(&self.base)
            .map_err(|e| e.to_string())?;
        let old = self
            .session
            .swap_const(wid, view.to_graph_layout(weights))
            .map_err(|e| e.to_string())?;
        let out = self.session.run_nodes(start..end);
        self.session
            .swap_const(wid, old)
            .map_err(|e| e.to_string())?;
        out.map_err(|e| e.to_string())?;
        let out = self.session.outputs();
        Ok(mean_kl(
            &self.reference,
            &probabilities(&out[0], self.classes),
            self.classes,
        ))
    }
}

/// Per layer, `s_l`: the KL added per unit of relative output error, measured with noise of
/// relative output energy `level` in the weights of layer `l` alone. `signals[l]` is
/// `tr(W H Wᵀ)` of the layer.
pub fn measure(
    probe: &mut Probe,
    layers: &[usize],
    views: &[WeightView],
    hessians: &[&[Hessian]],
    signals: &[f64],
    level: f64,
) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(layers.len());
    for (i, &node) in layers.iter().enumerate() {
        let w = &views[i];
        let noise = channel_noise(w, i as u64 + 1);
        let e_n = output_energy(&noise, w.channels, hessians[i])?;
        if signals[i] <= 0.0 || e_n <= 0.0 {
            out.push(0.0);
            continue;
        }
        let a = (level * signals[i] / e_n).sqrt() as f32;
        let perturbed: Vec<f32> = w
            .data
            .iter()
            .zip(&noise)
            .map(|(&v, &n)| v + a * n)
            .collect();
        let kl = probe.kl_with(node, w, &perturbed)?;
        out.push(kl / level);
    }
    Ok(out)
}

/// Spearman's rank correlation (average ranks for ties).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    fn ranks(x: &[f64]) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..x.len()).collect();
        idx.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
        let mut r = vec![0f64; x.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
                j += 1;
            }
            for &t in &idx[i..=j] {
                r[t] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        r
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_energy_is_the_energy_of_the_outputs() {
        // Two groups of 3 channels over k = 40 inputs (the GEMM path: 3 * 40 * 40 < 2^16 is
        // the loop; 3 * 200 * 200 the GEMM).
        for k in [40usize, 200] {
            let (channels, n) = (6, 50);
            let mut g = gaussian(3);
            let xs: Vec<Vec<f32>> = (0..2).map(|_| (0..n * k).map(|_| g()).collect()).collect();
            let d: Vec<f32> = (0..channels * k).map(|_| g()).collect();
            let hs: Vec<Hessian> = xs
                .iter()
                .map(|x| {
                    let mut h = Hessian::new(k);
                    h.add(x, n);
                    h
                })
                .collect();
            let want: f64 = (0..channels)
                .map(|c| {
                    let x = &xs[c / 3];
                    (0..n)
                        .map(|p| {
                            (0..k)
                                .map(|i| d[c * k + i] as f64 * x[p * k + i] as f64)
                                .sum::<f64>()
                                .powi(2)
                        })
                        .sum::<f64>()
                })
                .sum();
            let got = output_energy(&d, channels, &hs).unwrap();
            assert!((got - want).abs() < 1e-4 * want, "k {k}: {got} vs {want}");
        }
    }

    #[test]
    fn spearman_of_monotone_and_reversed_orders() {
        let a = [1.0, 2.0, 3.0, 10.0];
        assert!((spearman(&a, &[0.1, 0.5, 0.7, 0.9]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn softmax_outputs_are_recognized_and_kl_is_zero_for_equal_outputs() {
        let probs = [0.25f32, 0.75, 0.5, 0.5];
        assert_eq!(probabilities(&probs, 2), vec![0.25, 0.75, 0.5, 0.5]);
        let logits = [0.0f32, 0.0, 1.0, 1.0];
        assert_eq!(probabilities(&logits, 2), vec![0.5, 0.5, 0.5, 0.5]);
        let p = probabilities(&[1.0, 2.0, 3.0], 3);
        assert_eq!(mean_kl(&p, &p, 3), 0.0);
        assert!(mean_kl(&p, &probabilities(&[1.0, 2.0, 3.5], 3), 3) > 0.0);
    }
}

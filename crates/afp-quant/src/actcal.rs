//! Activation calibration by the error of the layer's *output*: a layer input's format and
//! offset are chosen by `||W (x - Q(x))||² / ||W x||²` over sampled input vectors, not by the
//! squared error of the input values themselves, so clipping or coarse steps in inputs that
//! the weights amplify cost more than in inputs they ignore.

use crate::calib::InputStats;
use crate::plan::ActPlan;
use crate::search::{self, Family};
use crate::weights::WeightView;
use afp_format::ZeroMode;
use afp_kernels::{matmul, threads_for, MatLayout};

/// Input vectors kept per group to measure output errors.
const VECTORS: usize = 256;
/// Configurations (best by input error first) whose output error is measured.
const SHORTLIST: usize = 6;

/// A layer's weights with sampled input vectors: the relative output error of rounding them.
pub struct OutputProbe<'a> {
    w: &'a WeightView,
    /// Per group: `m x k` input vectors.
    x: Vec<Vec<f32>>,
    signal: f64,
}

impl<'a> OutputProbe<'a> {
    pub fn new(w: &'a WeightView, stats: &InputStats) -> Result<OutputProbe<'a>, String> {
        let groups = stats.patches.len();
        let k = w.reduction;
        if groups == 0 || !w.channels.is_multiple_of(groups) || stats.patch_len != k {
            return Err("the output error of activations needs calibration input vectors".into());
        }
        let x: Vec<Vec<f32>> = stats
            .patches
            .iter()
            .map(|p| {
                let n = p.len() / k.max(1);
                let step = n.div_ceil(VECTORS).max(1);
                p.chunks_exact(k).step_by(step).flatten().copied().collect()
            })
            .collect();
        let mut probe = OutputProbe { w, x, signal: 0.0 };
        probe.signal = probe.energy(|g| probe.x[g].clone());
        Ok(probe)
    }

    /// `sum_g ||X_g W_gᵀ||²` for the vectors `x_of(g)` of each group.
    fn energy(&self, x_of: impl Fn(usize) -> Vec<f32>) -> f64 {
        let groups = self.x.len();
        let k = self.w.reduction;
        let per = self.w.channels / groups;
        let mut total = 0f64;
        for g in 0..groups {
            let x = x_of(g);
            let m = x.len() / k.max(1);
            let wg = &self.w.data[g * per * k..(g + 1) * per * k];
            if m * per * k < 1 << 15 {
                for xi in x.chunks_exact(k) {
                    for wr in wg.chunks_exact(k) {
                        let d: f64 = xi.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
                        total += d * d;
                    }
                }
            } else {
                let mut y = vec![0f32; m * per];
                matmul(
                    m,
                    per,
                    k,
                    &mut y,
                    per,
                    false,
                    &x,
                    MatLayout::row_major(k),
                    wg,
                    MatLayout::col_major(k),
                    1.0,
                    threads_for(m, per, k),
                );
                total += y.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
            }
        }
        total
    }

    /// Relative output error of rounding the inputs to `plan`'s grid.
    pub fn relative_error(&self, plan: &ActPlan) -> Result<f64, String> {
        let grid = plan.grid().ok_or("invalid activation format")?;
        if self.signal <= 0.0 {
            return Ok(0.0);
        }
        let e = self.energy(|g| {
            self.x[g]
                .iter()
                .map(|&v| v - grid.quantize_finite(v))
                .collect()
        });
        Ok(e / self.signal)
    }
}

/// The activation configuration of `bits` bits with the least relative output error (plus
/// penalty), among the [`SHORTLIST`] best by input error; returns it with its output error.
pub fn best_by_output(
    probe: &OutputProbe,
    stats: &InputStats,
    bits: u32,
    family: Family,
    zero_mode: ZeroMode,
    penalty: f64,
    int8_kernels: bool,
) -> Result<(ActPlan, f64), String> {
    let mut best: Option<(f64, ActPlan, f64)> = None;
    for (score, plan) in
        search::activation_candidates(stats, bits, family, zero_mode, penalty, int8_kernels)?
            .into_iter()
            .take(SHORTLIST)
    {
        let input_rel = plan.sqnr_db.map_or(0.0, |db| 10f64.powf(-db / 10.0));
        let e = probe.relative_error(&plan)?;
        let s = e + (score - input_rel);
        if best.as_ref().is_none_or(|b| s < b.0) {
            best = Some((s, plan, e));
        }
    }
    best.map(|b| (b.1, b.2))
        .ok_or_else(|| "no activation format".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input channel the weights ignore may be clipped hard; one they amplify may not:
    /// the output error sees the difference, the input error does not.
    #[test]
    fn output_error_weights_inputs_by_the_layer() {
        let k = 2;
        // Input 0 is large but has zero weight; input 1 is small and matters.
        let mut patches = Vec::new();
        for i in 0..400 {
            patches.push(((i % 20) as f32) * 5.0);
            patches.push(((i % 7) as f32) * 0.13);
        }
        let stats = InputStats {
            min: 0.0,
            max: 95.0,
            sample: patches.clone(),
            patches: vec![patches],
            patch_len: k,
            patch_count: 400,
            hessians: vec![],
        };
        let w = WeightView {
            data: vec![0.0, 1.0, 0.0, -2.0],
            channels: 2,
            reduction: k,
            transposed: false,
            shape: vec![2, 2],
        };
        let probe = OutputProbe::new(&w, &stats).unwrap();
        let by_input =
            search::best_activation(&stats, 4, Family::Afp, ZeroMode::Subnormal, 0.0, false)
                .unwrap();
        let (by_output, e) = best_by_output(
            &probe,
            &stats,
            4,
            Family::Afp,
            ZeroMode::Subnormal,
            0.0,
            false,
        )
        .unwrap();
        let e_input = probe.relative_error(&by_input).unwrap();
        assert!(e <= e_input, "{e} > {e_input}");
        assert_ne!(by_output, by_input);
        assert!(
            e < 0.5 * e_input,
            "output choice {e} vs input choice {e_input}"
        );
    }
}

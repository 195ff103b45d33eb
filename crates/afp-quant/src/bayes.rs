//! Bayesian optimization of a layer's configuration (E/M split and offset shift), as the paper
//! searched it: a Gaussian-process surrogate (RBF kernel) of the log objective over the
//! discrete grid of configurations, and expected improvement to choose the next one to
//! evaluate. Hand-written: the space is tiny (tens of points), so a dense Cholesky suffices.

/// A point of the search space, scaled to [0, 1] per axis.
pub type Point = [f64; 2];

fn kernel(a: &Point, b: &Point, length: f64) -> f64 {
    let d2 = (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2);
    (-0.5 * d2 / (length * length)).exp()
}

/// Lower-triangular Cholesky factor of a symmetric positive definite matrix (row-major n x n).
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// Solves `L L^T x = b`.
fn chol_solve(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut y = b.to_vec();
    for i in 0..n {
        for k in 0..i {
            y[i] -= l[i * n + k] * y[k];
        }
        y[i] /= l[i * n + i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            y[i] -= l[k * n + i] * y[k];
        }
        y[i] /= l[i * n + i];
    }
    y
}

fn normal_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn normal_cdf(z: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 for erf: absolute error < 1.5e-7.
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
            + 0.254829592)
            * t
            * (-x * x).exp();
    0.5 * (1.0 + if x >= 0.0 { y } else { -y })
}

/// Result of a minimization: the best candidate index and how many were evaluated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BayesResult {
    pub best: usize,
    pub best_value: f64,
    pub evaluations: usize,
}

/// Minimizes `f` over `candidates` (points in [0,1]^2), evaluating at most `budget` of them:
/// `initial` given starting indices, then the candidate of greatest expected improvement of the
/// GP posterior of `ln(f)`, until the budget is spent or no candidate is expected to improve
/// by more than 0.1% of the best value. Deterministic.
pub fn minimize(
    candidates: &[Point],
    initial: &[usize],
    budget: usize,
    mut f: impl FnMut(usize) -> f64,
) -> BayesResult {
    let mut seen: Vec<(usize, f64)> = Vec::new();
    let transform = |v: f64| v.max(1e-300).ln();
    for &i in initial.iter().take(budget.max(1)) {
        if !seen.iter().any(|s| s.0 == i) {
            seen.push((i, f(i)));
        }
    }
    while seen.len() < budget.min(candidates.len()) {
        let n = seen.len();
        let ys: Vec<f64> = seen.iter().map(|s| transform(s.1)).collect();
        let mean = ys.iter().sum::<f64>() / n as f64;
        let var = (ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / n as f64).max(1e-6);
        let yn: Vec<f64> = ys.iter().map(|y| (y - mean) / var.sqrt()).collect();
        let length = 0.35;
        let mut k = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                k[i * n + j] = kernel(&candidates[seen[i].0], &candidates[seen[j].0], length)
                    + if i == j { 1e-4 } else { 0.0 };
            }
        }
        let Some(l) = cholesky(&k, n) else { break };
        let alpha = chol_solve(&l, n, &yn);
        let best_y = yn.iter().cloned().fold(f64::INFINITY, f64::min);
        let mut pick: Option<(f64, usize)> = None;
        for (c, p) in candidates.iter().enumerate() {
            if seen.iter().any(|s| s.0 == c) {
                continue;
            }
            let ks: Vec<f64> = seen
                .iter()
                .map(|s| kernel(p, &candidates[s.0], length))
                .collect();
            let mu: f64 = ks.iter().zip(&alpha).map(|(a, b)| a * b).sum();
            let v = chol_solve(&l, n, &ks);
            let s2 = (1.0 - ks.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>()).max(1e-12);
            let s = s2.sqrt();
            let z = (best_y - mu) / s;
            let ei = (best_y - mu) * normal_cdf(z) + s * normal_pdf(z);
            if pick.is_none_or(|b| ei > b.0) {
                pick = Some((ei, c));
            }
        }
        match pick {
            // EI is in standardized log units: 1e-3 is about 0.1% of the value.
            Some((ei, c)) if ei > 1e-3 / var.sqrt() => {
                seen.push((c, f(c)));
            }
            _ => break,
        }
    }
    let (best, best_value) =
        seen.iter()
            .cloned()
            .fold((0, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
    BayesResult {
        best,
        best_value,
        evaluations: seen.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_minimum_of_a_smooth_bowl_with_few_evaluations() {
        let mut pts = Vec::new();
        for e in 0..8 {
            for d in 0..5 {
                pts.push([e as f64 / 7.0, d as f64 / 4.0]);
            }
        }
        let f = |i: usize| {
            let p = pts[i];
            1e-3 * (1.0 + 30.0 * ((p[0] - 0.57).powi(2) + (p[1] - 0.25).powi(2)))
        };
        let exhaustive = (0..pts.len())
            .min_by(|&a, &b| f(a).total_cmp(&f(b)))
            .unwrap();
        let r = minimize(&pts, &[0, 20, 39], pts.len(), f);
        assert_eq!(r.best, exhaustive);
        assert!(
            r.evaluations < pts.len(),
            "used {} of {}",
            r.evaluations,
            pts.len()
        );
        assert!(normal_cdf(0.0) - 0.5 < 1e-7 && (normal_cdf(1.96) - 0.975).abs() < 1e-3);
    }
}

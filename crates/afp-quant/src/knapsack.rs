//! Exact multiple-choice knapsack for bit allocation: one option per layer, minimizing the
//! summed cost with `sum(weight_l * bits_l) <= budget`, exact on the integer bit count.
//!
//! Dynamic programming over the Pareto frontier of (bits used, cost) of the layers seen so
//! far: a partial allocation that uses more bits than another and costs no less can never be
//! part of a better solution, so only the frontier is kept. Its size is bounded by the number
//! of distinct bit totals (at most `budget / gcd(weights)`) and in practice is far smaller;
//! states that cannot fit the cheapest options of the remaining layers are dropped at once.

/// Chooses one option per layer. `options[l]` lists (bits, cost) of layer `l`; `weights[l]`
/// is what one bit of layer `l` costs in the budget (its parameter count). Returns the index
/// of the chosen option per layer, or an error when even the smallest options do not fit or a
/// cost is not finite. Ties between equal-cost solutions go to the one using fewer bits.
pub fn solve(
    options: &[Vec<(u32, f64)>],
    weights: &[usize],
    budget: f64,
) -> Result<Vec<usize>, String> {
    if options.len() != weights.len() {
        return Err(format!(
            "{} option lists for {} layers",
            options.len(),
            weights.len()
        ));
    }
    if let Some(l) = options.iter().position(|o| o.is_empty()) {
        return Err(format!("layer {l} has no option"));
    }
    if options.iter().flatten().any(|&(_, c)| !c.is_finite()) {
        return Err("a bit-allocation cost is not finite".into());
    }
    let cap = (budget + 1e-9).floor().max(-1.0);
    let bits_of = |l: usize, j: usize| options[l][j].0 as u64 * weights[l] as u64;
    // Cheapest possible use of layers l.. (suffix sums).
    let mut rest = vec![0u64; options.len() + 1];
    for l in (0..options.len()).rev() {
        let min = (0..options[l].len())
            .map(|j| bits_of(l, j))
            .min()
            .unwrap_or(0);
        rest[l] = rest[l + 1] + min;
    }
    if cap < 0.0 || rest[0] as f64 > cap {
        let total: usize = weights.iter().sum();
        return Err(format!(
            "the budget is below the smallest bit-width of every layer ({:.3} needed)",
            rest[0] as f64 / total.max(1) as f64
        ));
    }
    let cap = cap as u64;
    // Frontier: (bits used, cost), increasing bits, strictly decreasing cost; and per layer,
    // for each state of its frontier, (option, index of the parent state).
    let mut front: Vec<(u64, f64)> = vec![(0, 0.0)];
    let mut parents: Vec<Vec<(u32, u32)>> = Vec::with_capacity(options.len());
    for (l, opts) in options.iter().enumerate() {
        let mut cand: Vec<(u64, f64, u32, u32)> = Vec::with_capacity(front.len() * opts.len());
        for (j, &(_, c)) in opts.iter().enumerate() {
            let b = bits_of(l, j);
            for (p, &(used, cost)) in front.iter().enumerate() {
                let u = used + b;
                if u + rest[l + 1] > cap {
                    // The frontier is sorted by bits: the rest do not fit either.
                    break;
                }
                cand.push((u, cost + c, j as u32, p as u32));
            }
        }
        cand.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        let mut next = Vec::with_capacity(cand.len());
        let mut par = Vec::with_capacity(cand.len());
        for (u, c, j, p) in cand {
            if next.last().is_none_or(|&(_, best): &(u64, f64)| c < best) {
                next.push((u, c));
                par.push((j, p));
            }
        }
        front = next;
        parents.push(par);
    }
    // The last state has the lowest cost (costs decrease along the frontier); among equal
    // costs the first, with fewer bits, was kept.
    let mut state = front.len().checked_sub(1).ok_or("no feasible allocation")?;
    let mut pick = vec![0usize; options.len()];
    for l in (0..options.len()).rev() {
        let (j, p) = parents[l][state];
        pick[l] = j as usize;
        state = p as usize;
    }
    Ok(pick)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every combination: the minimum cost of a feasible one, or `None`.
    fn brute(options: &[Vec<(u32, f64)>], weights: &[usize], budget: f64) -> Option<f64> {
        let mut best: Option<f64> = None;
        let mut idx = vec![0usize; options.len()];
        loop {
            let used: u64 = idx
                .iter()
                .enumerate()
                .map(|(l, &j)| options[l][j].0 as u64 * weights[l] as u64)
                .sum();
            if used as f64 <= budget + 1e-9 {
                let c: f64 = idx.iter().enumerate().map(|(l, &j)| options[l][j].1).sum();
                if best.is_none_or(|b| c < b) {
                    best = Some(c);
                }
            }
            // Next combination.
            let mut l = 0;
            loop {
                if l == idx.len() {
                    return best;
                }
                idx[l] += 1;
                if idx[l] < options[l].len() {
                    break;
                }
                idx[l] = 0;
                l += 1;
            }
        }
    }

    /// Options per layer, weights, budget.
    type Instance = (Vec<Vec<(u32, f64)>>, Vec<usize>, f64);

    fn instance() -> impl Strategy<Value = Instance> {
        (1usize..6)
            .prop_flat_map(|layers| {
                (
                    prop::collection::vec(
                        prop::collection::vec((2u32..9, 0.0f64..10.0), 1..5),
                        layers,
                    ),
                    prop::collection::vec(1usize..50, layers),
                    0.0f64..1.0,
                )
            })
            .prop_map(|(mut opts, w, frac)| {
                for o in &mut opts {
                    o.sort_by_key(|x| x.0);
                    o.dedup_by_key(|x| x.0);
                }
                let lo: f64 = opts
                    .iter()
                    .zip(&w)
                    .map(|(o, &w)| (o[0].0 * w as u32) as f64)
                    .sum();
                let hi: f64 = opts
                    .iter()
                    .zip(&w)
                    .map(|(o, &w)| (o.last().unwrap().0 * w as u32) as f64)
                    .sum();
                // Budgets from a little below the minimum to the maximum.
                let budget = (lo - 5.0 + frac * (hi - lo + 5.0)).floor();
                (opts, w, budget)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn matches_brute_force((opts, w, budget) in instance()) {
            let want = brute(&opts, &w, budget);
            match solve(&opts, &w, budget) {
                Ok(pick) => {
                    let used: u64 = pick.iter().enumerate().map(|(l, &j)| opts[l][j].0 as u64 * w[l] as u64).sum();
                    prop_assert!(used as f64 <= budget + 1e-9, "over budget: {} > {}", used, budget);
                    let c: f64 = pick.iter().enumerate().map(|(l, &j)| opts[l][j].1).sum();
                    let want = want.expect("brute force found no feasible allocation");
                    prop_assert!((c - want).abs() <= 1e-9 * (1.0 + want.abs()), "cost {} vs optimum {}", c, want);
                }
                Err(_) => prop_assert!(want.is_none()),
            }
        }
    }

    #[test]
    fn beats_the_greedy_allocation() {
        // Layer 0's extra bit has the best gain per bit, but taking it leaves no room for
        // layer 1's larger gain: greedy takes it, the exact solution does not.
        let opts = vec![vec![(4, 1.0), (5, 0.5)], vec![(4, 1.0), (5, 0.1)]];
        let w = [10, 20];
        assert_eq!(solve(&opts, &w, 140.0).unwrap(), vec![0, 1]);
        assert_eq!(
            crate::search::allocate(&opts, &w, 140.0).unwrap(),
            vec![1, 0]
        );
    }

    #[test]
    fn refuses_budgets_below_the_minimum_and_non_finite_costs() {
        let opts = vec![vec![(3, 1.0), (4, 0.5)]];
        assert!(solve(&opts, &[10], 29.0).is_err());
        assert_eq!(solve(&opts, &[10], 30.0).unwrap(), vec![0]);
        assert_eq!(solve(&opts, &[10], 40.0).unwrap(), vec![1]);
        assert!(solve(&[vec![(3, f64::NAN)]], &[10], 40.0).is_err());
    }

    /// A ResNet-50-sized instance (54 layers, six widths) stays fast.
    #[test]
    fn large_instances_are_fast() {
        let mut s = 1u64;
        let mut rnd = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as f64 / (1u64 << 31) as f64
        };
        let w: Vec<usize> = (0..54)
            .map(|_| 1000 + (rnd() * 2_000_000.0) as usize)
            .collect();
        let opts: Vec<Vec<(u32, f64)>> = (0..54)
            .map(|_| {
                let s = rnd();
                (3..=8)
                    .map(|b| (b, s * 4f64.powi(-(b as i32)) * (0.5 + rnd())))
                    .collect()
            })
            .collect();
        let total: usize = w.iter().sum();
        let t = std::time::Instant::now();
        let pick = solve(&opts, &w, 4.8 * total as f64).unwrap();
        let used: f64 = pick
            .iter()
            .enumerate()
            .map(|(l, &j)| (opts[l][j].0 as usize * w[l]) as f64)
            .sum();
        assert!(used <= 4.8 * total as f64);
        assert!(t.elapsed().as_secs_f64() < 20.0, "{:?}", t.elapsed());
    }
}

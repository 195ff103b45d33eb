//! Property tests: encoding any finite f32 gives the nearest level.

use afp_format::{Format, Grid, ZeroMode};
use proptest::prelude::*;

fn grid() -> impl Strategy<Value = Grid> {
    (any::<bool>(), 0u32..=7, 0u32..=7, any::<bool>(), -20i32..20).prop_filter_map(
        "valid format",
        |(signed, e, m, nosub, t)| {
            let zm = if nosub {
                ZeroMode::NoSubnormal
            } else {
                ZeroMode::Subnormal
            };
            let f = Format::new(signed, e, m, zm).ok()?;
            Grid::new(f, t).ok()
        },
    )
}

proptest! {
    #[test]
    fn encode_is_nearest(g in grid(), x in -1e7f32..1e7f32) {
        let levels = g.levels();
        let q = g.decode(g.encode(x).unwrap()) as f64;
        let best = levels.iter().map(|&l| (l as f64 - x as f64).abs()).fold(f64::INFINITY, f64::min);
        prop_assert_eq!((q - x as f64).abs(), best);
    }

    #[test]
    fn quantize_is_idempotent(g in grid(), x in -1e7f32..1e7f32) {
        let q = g.quantize_finite(x);
        prop_assert_eq!(g.quantize_finite(q), q);
    }
}

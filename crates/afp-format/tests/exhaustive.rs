//! Exhaustive checks over every format of at most 8 bits, both zero modes and several offsets:
//! decode-then-encode gives the code back, and encode gives the nearest level (ties to the even
//! code) according to a brute-force search of the sorted levels.

use afp_format::{Format, Grid, Lut, ZeroMode};

fn all_formats() -> Vec<Format> {
    let mut v = Vec::new();
    for zm in [ZeroMode::Subnormal, ZeroMode::NoSubnormal] {
        for signed in [true, false] {
            for e in 0..=8u32 {
                for m in 0..=8u32 {
                    if let Ok(f) = Format::new(signed, e, m, zm) {
                        v.push(f);
                    }
                }
            }
        }
    }
    v
}

fn offsets(f: Format) -> Vec<i32> {
    let (lo, hi) = f.offset_range();
    [lo, lo + 1, -9, -3, 0, 2, 7, hi - 1, hi]
        .into_iter()
        .filter(|t| (lo..=hi).contains(t))
        .collect()
}

/// Levels with the code of each (the +0 code for zero), sorted by value.
fn level_codes(g: &Grid) -> Vec<(f64, u8)> {
    let mut v: Vec<(f64, u8)> = (0..g.format().code_count())
        .map(|c| (g.decode(c as u8) as f64, c as u8))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    v.dedup_by(|b, a| a.0 == b.0); // keeps the first: +0 (code 0) before -0 codes
    v
}

/// The brute-force answer: the nearest level, the even code on a tie.
fn nearest(levels: &[(f64, u8)], x: f64) -> u8 {
    let i = levels.partition_point(|&(v, _)| v < x);
    let mut cands: Vec<(f64, u8)> = Vec::new();
    for j in [i.wrapping_sub(1), i] {
        if let Some(&l) = levels.get(j) {
            cands.push(l);
        }
    }
    cands.sort_by(|a, b| {
        (a.0 - x)
            .abs()
            .total_cmp(&(b.0 - x).abs())
            .then((a.1 & 1).cmp(&(b.1 & 1)))
    });
    cands[0].1
}

fn probes(levels: &[(f64, u8)], rng: &mut u64) -> Vec<f32> {
    let mut xs = vec![0.0f32, -0.0];
    let max = levels.last().unwrap().0;
    for w in levels.windows(2) {
        let (a, b) = (w[0].0, w[1].0);
        for v in [a, b, (a + b) / 2.0] {
            let f = v as f32;
            if f as f64 == v {
                // exact in f32: the level or the exact tie, and its neighbours
                xs.extend([f, f.next_up(), f.next_down()]);
            }
        }
        xs.push(((a + 3.0 * b) / 4.0) as f32);
    }
    for k in [1.0001f64, 1.5, 2.0, 1e3] {
        xs.push((max * k).min(f32::MAX as f64) as f32);
        xs.push(-(max * k).min(f32::MAX as f64) as f32);
    }
    // Random magnitudes, log-uniform over the grid's range and beyond, both signs.
    let min_pos = levels.iter().find(|l| l.0 > 0.0).unwrap().0;
    let (lo, hi) = ((min_pos / 8.0).ln(), (max * 4.0).min(f32::MAX as f64).ln());
    for _ in 0..300 {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let u = (*rng >> 11) as f64 / (1u64 << 53) as f64;
        let v = (lo + u * (hi - lo)).exp() as f32;
        xs.push(if *rng & 1 == 0 { v } else { -v });
    }
    xs.retain(|x| x.is_finite());
    xs
}

#[test]
fn decode_then_encode_returns_the_code() {
    let mut grids = 0;
    for f in all_formats() {
        for t in offsets(f) {
            let g = Grid::new(f, t).unwrap();
            grids += 1;
            for c in 0..f.code_count() {
                let c = c as u8;
                let v = g.decode(c);
                let back = g.encode(v).unwrap();
                if v == 0.0 {
                    assert_eq!(back, 0, "{f} t={t}: zero code {c} must encode to +0");
                } else {
                    assert_eq!(back, c, "{f} {:?} t={t}: code {c} value {v}", f.zero_mode());
                }
            }
        }
    }
    assert!(grids > 600, "only {grids} grids tested");
}

#[test]
fn levels_are_sorted_distinct_and_complete() {
    for f in all_formats() {
        for t in offsets(f) {
            let g = Grid::new(f, t).unwrap();
            let levels = g.levels();
            assert!(levels.windows(2).all(|w| w[0] < w[1]), "{f} t={t}");
            let expected = f.code_count() - f.is_signed() as usize; // -0 and +0 are one level
            assert_eq!(levels.len(), expected, "{f} t={t}");
            assert_eq!(*levels.last().unwrap(), g.max());
            assert_eq!(
                levels.iter().copied().find(|&v| v > 0.0).unwrap(),
                g.min_positive()
            );
            if f.is_signed() {
                assert_eq!(levels[0], -g.max());
            } else {
                assert_eq!(levels[0], 0.0);
            }
            // Integer view: every value is n * 2^(t-M) with |n| <= bound.
            if let Some(_c) = f.container() {
                for c in 0..f.code_count() {
                    let n = f.integer(c as u8).unwrap();
                    assert!((n.unsigned_abs() as f64) <= f.int_bound());
                    let v = n as f64 * 2f64.powi(g.int_unit_exp());
                    assert_eq!(v, g.decode(c as u8) as f64, "{f} t={t} code {c}");
                }
            }
        }
    }
}

#[test]
fn encode_gives_the_nearest_level_ties_to_even() {
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut checked = 0usize;
    for f in all_formats() {
        for t in offsets(f) {
            let g = Grid::new(f, t).unwrap();
            let levels = level_codes(&g);
            for x in probes(&levels, &mut rng) {
                let want = nearest(&levels, x as f64);
                let got = g.encode(x).unwrap();
                assert_eq!(
                    g.decode(got),
                    g.decode(want),
                    "{f} {:?} t={t}: x={x:e} gave code {got}, nearest is code {want}",
                    f.zero_mode()
                );
                assert_eq!(got, want, "{f} t={t}: x={x:e}");
                checked += 1;
            }
        }
    }
    assert!(checked > 100_000, "only {checked} values checked");
}

#[test]
fn non_finite_input_is_an_error() {
    let g = Grid::new(Format::signed(3, 2).unwrap(), 0).unwrap();
    for x in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert!(g.encode(x).is_err());
    }
    let mut out = [0u8; 3];
    let err = g.encode_slice(&[1.0, 2.0, f32::NAN], &mut out).unwrap_err();
    assert!(err.to_string().contains("index 2"), "{err}");
}

#[test]
fn bulk_encoding_equals_scalar_encoding() {
    let mut rng = 0x2545F4914F6CDD1Du64;
    for f in all_formats() {
        for t in offsets(f) {
            let g = Grid::new(f, t).unwrap();
            let mut xs = probes(&level_codes(&g), &mut rng);
            xs.extend([f32::MAX, -f32::MAX, f32::MIN_POSITIVE, -1e-45, 1e-45]);
            let mut bulk = vec![0u8; xs.len()];
            g.encode_slice(&xs, &mut bulk).unwrap();
            for (x, b) in xs.iter().zip(&bulk) {
                assert_eq!(
                    *b,
                    g.encode(*x).unwrap(),
                    "{f} {:?} t={t}: x={x:e}",
                    f.zero_mode()
                );
            }
        }
    }
}

#[test]
fn lookup_tables_equal_decoding_for_every_byte() {
    for f in all_formats() {
        for t in offsets(f) {
            let g = Grid::new(f, t).unwrap();
            let lut = Lut::new(&g);
            for c in 0..=255u8 {
                assert_eq!(
                    lut.decode(c).to_bits(),
                    g.decode(c).to_bits(),
                    "{f} {:?} t={t} code {c}",
                    f.zero_mode()
                );
            }
        }
    }
}

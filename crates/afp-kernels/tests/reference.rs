//! Every kernel against a naive direct-loop reference (f64 accumulation), on
//! many shapes and under 1, 2 and 3 rayon threads.

use afp_kernels::{gemm, global_avg_pool, Activation, Conv2d, GemmBias, Pool2d};
use proptest::prelude::*;

const ACTS: [Activation; 6] = [
    Activation::None,
    Activation::Relu,
    Activation::Clip {
        min: -0.5,
        max: 0.75,
    },
    Activation::Sigmoid,
    Activation::HardSigmoid {
        alpha: 0.2,
        beta: 0.5,
    },
    Activation::HardSwish,
];

fn rand_vec(len: usize, seed: &mut u64) -> Vec<f32> {
    (0..len)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

/// |got - want| <= 1e-5 * max|want| (+ a tiny absolute floor for all-zero outputs).
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_close_scaled(got, want, 0.0, what)
}

/// As [`assert_close`], with the scale at least `pre_act_max`: the largest
/// |value| before a saturating activation (Clip, Sigmoid, ...), since f32
/// rounding of the sum is relative to that, not to the clamped output.
fn assert_close_scaled(got: &[f32], want: &[f32], pre_act_max: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .fold(pre_act_max, |m, v| m.max(v.abs()))
        .max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * scale,
            "{what}: element {i}: got {g}, want {w} (max |out| {scale})"
        );
    }
}

fn act_ref(act: Activation, x: f64) -> f32 {
    let v = match act {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::Clip { min, max } => x.max(min as f64).min(max as f64),
        Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Activation::HardSigmoid { alpha, beta } => (alpha as f64 * x + beta as f64).clamp(0.0, 1.0),
        Activation::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
    };
    v as f32
}

#[allow(clippy::too_many_arguments)]
fn conv_ref(
    c: &Conv2d,
    n: usize,
    h: usize,
    w: usize,
    x: &[f32],
    wt: &[f32],
    b: Option<&[f32]>,
    act: Activation,
) -> (Vec<f32>, f32) {
    let mut pre_max = 0.0f32;
    let (oh, ow) = c.out_hw(h, w);
    let (cig, cog) = (c.c_in / c.group, c.c_out / c.group);
    let mut out = vec![0.0; n * c.c_out * oh * ow];
    for ni in 0..n {
        for co in 0..c.c_out {
            let g = co / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = b.map_or(0.0, |b| b[co] as f64);
                    for cl in 0..cig {
                        let ci = g * cig + cl;
                        for ki in 0..c.kh {
                            for kj in 0..c.kw {
                                let iy = (oy * c.stride[0] + ki * c.dilation[0]) as isize
                                    - c.pads[0] as isize;
                                let ix = (ox * c.stride[1] + kj * c.dilation[1]) as isize
                                    - c.pads[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((ni * c.c_in + ci) * h + iy as usize) * w + ix as usize];
                                let wv = wt[((co * cig + cl) * c.kh + ki) * c.kw + kj];
                                s += xv as f64 * wv as f64;
                            }
                        }
                    }
                    pre_max = pre_max.max(s.abs() as f32);
                    out[((ni * c.c_out + co) * oh + oy) * ow + ox] = act_ref(act, s);
                }
            }
        }
    }
    (out, pre_max)
}

#[allow(clippy::too_many_arguments)]
fn check_conv(
    c: &Conv2d,
    n: usize,
    h: usize,
    w: usize,
    act: Activation,
    with_bias: bool,
    threads: &[usize],
    seed: &mut u64,
) {
    let x = rand_vec(n * c.c_in * h * w, seed);
    let wt = rand_vec(c.c_out * c.c_in / c.group * c.kh * c.kw, seed);
    let b = rand_vec(c.c_out, seed);
    let bias = with_bias.then_some(&b[..]);
    let (want, pre_max) = conv_ref(c, n, h, w, &x, &wt, bias, act);
    for &t in threads {
        // Garbage-filled, too-small scratch and output: the kernel must overwrite / grow them.
        let mut scratch = vec![f32::NAN; 3];
        let mut out = vec![f32::NAN; want.len()];
        pool(t).install(|| c.run(n, h, w, &x, &wt, bias, act, &mut out, &mut scratch));
        assert_close_scaled(
            &out,
            &want,
            pre_max,
            &format!("conv {c:?} n{n} {h}x{w} {act:?} bias{with_bias} threads{t}"),
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn cv(
    c_in: usize,
    c_out: usize,
    k: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: [usize; 4],
    group: usize,
) -> Conv2d {
    Conv2d {
        c_in,
        c_out,
        kh: k[0],
        kw: k[1],
        stride,
        dilation,
        pads,
        group,
    }
}

#[test]
fn conv_matches_reference_on_many_shapes() {
    let cases: Vec<(Conv2d, usize, usize, usize)> = vec![
        // 1x1 direct (no im2col), batch 1 and 3
        (cv(8, 16, [1, 1], [1, 1], [1, 1], [0; 4], 1), 1, 5, 7),
        (cv(8, 16, [1, 1], [1, 1], [1, 1], [0; 4], 1), 3, 9, 4),
        // 1x1 stride 2 (ResNet downsample), 1x1 with padding
        (cv(6, 10, [1, 1], [2, 2], [1, 1], [0; 4], 1), 3, 9, 11),
        (cv(4, 5, [1, 1], [1, 1], [1, 1], [1, 0, 2, 1], 1), 1, 4, 6),
        // 3x3 pad 1, odd sizes
        (cv(5, 7, [3, 3], [1, 1], [1, 1], [1; 4], 1), 3, 9, 11),
        // stride 2, asymmetric pads
        (cv(4, 6, [3, 3], [2, 2], [1, 1], [0, 1, 1, 0], 1), 1, 10, 9),
        // stride 3, rectangular kernel, asymmetric pads
        (cv(3, 5, [5, 3], [3, 3], [1, 1], [2, 1, 0, 2], 1), 3, 13, 11),
        // mixed strides, dilations
        (cv(4, 4, [3, 3], [1, 1], [2, 2], [2; 4], 1), 1, 8, 9),
        (cv(3, 6, [3, 2], [1, 2], [2, 3], [1, 2, 0, 3], 1), 3, 9, 12),
        // grouped (non-depthwise)
        (cv(8, 12, [3, 3], [1, 1], [1, 1], [1; 4], 2), 3, 7, 6),
        (cv(8, 8, [1, 1], [1, 1], [1, 1], [0; 4], 4), 1, 5, 5),
        (cv(6, 9, [3, 3], [2, 1], [1, 2], [1, 2, 1, 0], 3), 3, 8, 9),
        // depthwise 3x3 / 5x5, multiplier 1 and 2, strides 1 and 2
        (cv(16, 16, [3, 3], [1, 1], [1, 1], [1; 4], 16), 1, 12, 13),
        (
            cv(16, 16, [3, 3], [2, 2], [1, 1], [0, 0, 1, 1], 16),
            3,
            13,
            12,
        ),
        (cv(8, 16, [3, 3], [1, 1], [1, 1], [1; 4], 8), 3, 7, 9),
        (cv(8, 16, [5, 5], [1, 1], [1, 1], [2; 4], 8), 1, 11, 10),
        (cv(8, 16, [5, 5], [2, 2], [1, 1], [2; 4], 8), 3, 15, 14),
        (cv(6, 6, [5, 5], [2, 2], [1, 1], [1, 2, 2, 1], 6), 1, 9, 9),
        // depthwise with dilation, stride 3, no padding
        (cv(4, 4, [3, 3], [1, 1], [2, 2], [2; 4], 4), 3, 9, 8),
        (cv(4, 8, [3, 3], [3, 3], [1, 1], [0; 4], 4), 1, 10, 11),
        // stem-like 7x7/2 pad 3 on 3 channels; single input channel
        (cv(3, 8, [7, 7], [2, 2], [1, 1], [3; 4], 1), 1, 33, 31),
        (cv(1, 6, [3, 3], [1, 1], [1, 1], [1; 4], 1), 3, 8, 7),
        // input smaller than the kernel, only reachable through padding
        (cv(3, 4, [3, 3], [1, 1], [1, 1], [1; 4], 1), 1, 2, 2),
        (cv(3, 3, [3, 3], [1, 1], [1, 1], [1; 4], 3), 3, 1, 2),
        // big enough for GEMM-internal threading and per-thread task rounds
        (cv(64, 64, [3, 3], [1, 1], [1, 1], [1; 4], 1), 1, 28, 28),
        (cv(32, 64, [3, 3], [1, 1], [1, 1], [1; 4], 1), 3, 24, 24),
        (cv(128, 96, [1, 1], [1, 1], [1, 1], [0; 4], 1), 3, 20, 20),
        (cv(64, 64, [3, 3], [1, 1], [1, 1], [1; 4], 64), 3, 28, 28),
    ];
    let mut seed = 1;
    for (i, (c, n, h, w)) in cases.iter().enumerate() {
        check_conv(
            c,
            *n,
            *h,
            *w,
            ACTS[i % ACTS.len()],
            i % 3 != 2,
            &[1, 2, 3],
            &mut seed,
        );
    }
}

/// Output planes of >= 128 pixels take the AVX2 path with im2col done while
/// packing (when the CPU has AVX2+FMA): strides, dilations, asymmetric pads,
/// groups, depth beyond one 256-deep slice, planes wider than one 1024-column
/// panel, every activation (fused or not), 1-3 threads.
#[test]
fn conv_large_planes_implicit_im2col() {
    let cases = [
        (cv(3, 8, [7, 7], [2, 2], [1, 1], [3; 4], 1), 1, 40, 38),
        (cv(32, 20, [3, 3], [1, 1], [1, 1], [1; 4], 1), 2, 37, 35),
        (
            cv(6, 13, [3, 2], [1, 2], [2, 3], [1, 2, 0, 3], 1),
            1,
            30,
            33,
        ),
        (
            cv(8, 12, [3, 3], [2, 1], [1, 1], [0, 1, 2, 0], 2),
            3,
            31,
            17,
        ),
        (cv(5, 7, [1, 1], [2, 2], [1, 1], [0; 4], 1), 1, 33, 29),
        (cv(4, 9, [5, 5], [1, 1], [1, 1], [2; 4], 1), 2, 12, 12),
    ];
    let mut seed = 5;
    for (i, (c, n, h, w)) in cases.iter().enumerate() {
        for (j, act) in ACTS.iter().enumerate() {
            check_conv(c, *n, *h, *w, *act, (i + j) % 2 == 0, &[1, 2, 3], &mut seed);
        }
    }
}

/// `run_add` gives exactly the bits of `run` without activation, then a separate add of the
/// residual, then the activation: on every conv path (1x1 direct, explicit and implicit
/// im2col, grouped, depthwise), with and without bias, 1-3 threads.
#[test]
fn conv_residual_add_matches_separate_add_bit_for_bit() {
    let cases = [
        (cv(8, 16, [1, 1], [1, 1], [1, 1], [0; 4], 1), 3, 9, 4),
        (cv(5, 7, [3, 3], [1, 1], [1, 1], [1; 4], 1), 3, 9, 11),
        (cv(3, 8, [7, 7], [2, 2], [1, 1], [3; 4], 1), 1, 40, 38),
        (cv(32, 20, [3, 3], [1, 1], [1, 1], [1; 4], 1), 2, 37, 35),
        (cv(300, 20, [1, 1], [1, 1], [1, 1], [0; 4], 1), 1, 12, 12),
        (cv(8, 12, [3, 3], [1, 1], [1, 1], [1; 4], 2), 3, 7, 6),
        (cv(16, 16, [3, 3], [1, 1], [1, 1], [1; 4], 16), 1, 12, 13),
        (cv(128, 96, [1, 1], [1, 1], [1, 1], [0; 4], 1), 3, 20, 20),
    ];
    let mut seed = 11;
    for (i, (c, n, h, w)) in cases.iter().enumerate() {
        let (oh, ow) = c.out_hw(*h, *w);
        let x = rand_vec(n * c.c_in * h * w, &mut seed);
        let wt = rand_vec(c.c_out * c.c_in / c.group * c.kh * c.kw, &mut seed);
        let b = rand_vec(c.c_out, &mut seed);
        let res = rand_vec(n * c.c_out * oh * ow, &mut seed);
        for (j, act) in ACTS.iter().enumerate() {
            let bias = ((i + j) % 2 == 0).then_some(&b[..]);
            for t in [1, 2, 3] {
                let mut scratch = Vec::new();
                let mut want = vec![0.0; res.len()];
                let mut got = vec![f32::NAN; res.len()];
                pool(t).install(|| {
                    c.run(
                        *n,
                        *h,
                        *w,
                        &x,
                        &wt,
                        bias,
                        Activation::None,
                        &mut want,
                        &mut scratch,
                    );
                    c.run_add(
                        *n,
                        *h,
                        *w,
                        &x,
                        &wt,
                        bias,
                        Some(&res),
                        *act,
                        &mut got,
                        &mut scratch,
                    );
                });
                for (v, &r) in want.iter_mut().zip(&res) {
                    *v = act.apply(*v + r);
                }
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "conv {c:?} n{n} {act:?} bias {} threads {t}",
                    bias.is_some()
                );
            }
        }
    }
}

#[test]
fn conv_all_activations_fused() {
    let mut seed = 2;
    let shapes = [
        cv(6, 8, [3, 3], [1, 1], [1, 1], [1; 4], 1),
        cv(8, 8, [1, 1], [1, 1], [1, 1], [0; 4], 1),
        cv(8, 16, [3, 3], [2, 2], [1, 1], [1; 4], 8),
    ];
    for c in &shapes {
        for act in ACTS {
            for bias in [false, true] {
                check_conv(c, 2, 9, 10, act, bias, &[1, 2], &mut seed);
            }
        }
    }
}

#[test]
fn conv_scratch_is_reusable_across_shapes() {
    let mut seed = 3;
    let mut scratch = Vec::new();
    let shapes = [
        (cv(3, 8, [7, 7], [2, 2], [1, 1], [3; 4], 1), 2, 20, 20),
        (cv(8, 4, [3, 3], [1, 1], [1, 1], [1; 4], 1), 1, 6, 5),
        (cv(4, 4, [1, 1], [1, 1], [1, 1], [0; 4], 1), 2, 6, 5),
    ];
    for (c, n, h, w) in &shapes {
        let x = rand_vec(n * c.c_in * h * w, &mut seed);
        let wt = rand_vec(c.c_out * c.c_in / c.group * c.kh * c.kw, &mut seed);
        let (want, _) = conv_ref(c, *n, *h, *w, &x, &wt, None, Activation::None);
        let mut out = vec![0.0; want.len()];
        pool(2).install(|| {
            c.run(
                *n,
                *h,
                *w,
                &x,
                &wt,
                None,
                Activation::None,
                &mut out,
                &mut scratch,
            )
        });
        assert_close(&out, &want, &format!("{c:?}"));
    }
}

#[test]
fn conv_is_deterministic_for_a_thread_count() {
    let mut seed = 4;
    let c = cv(32, 48, [3, 3], [1, 1], [1, 1], [1; 4], 1);
    let x = rand_vec(3 * 32 * 30 * 30, &mut seed);
    let wt = rand_vec(48 * 32 * 9, &mut seed);
    let run = || {
        let mut out = vec![0.0; 3 * 48 * 900];
        pool(2).install(|| {
            c.run(
                3,
                30,
                30,
                &x,
                &wt,
                None,
                Activation::Relu,
                &mut out,
                &mut Vec::new(),
            )
        });
        out
    };
    assert_eq!(run(), run());
}

#[test]
#[should_panic(expected = "conv: input length")]
fn conv_rejects_wrong_input_length() {
    let c = cv(2, 2, [1, 1], [1, 1], [1, 1], [0; 4], 1);
    let mut out = vec![0.0; 8];
    c.run(
        1,
        2,
        2,
        &[0.0; 7],
        &[0.0; 4],
        None,
        Activation::None,
        &mut out,
        &mut Vec::new(),
    );
}

// ---------------------------------------------------------------- gemm

#[allow(clippy::too_many_arguments)]
fn gemm_ref(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    alpha: f32,
    beta: f32,
    c: Option<GemmBias>,
    act: Activation,
) -> (Vec<f32>, f32) {
    let mut out = vec![0.0; m * n];
    let mut pre_max = 0.0f32;
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av as f64 * bv as f64;
            }
            let cv = match c {
                None => 0.0,
                Some(GemmBias::Row(r)) => r[j],
                Some(GemmBias::Full(f)) => f[i * n + j],
                Some(GemmBias::Col(cb)) => cb[i],
                Some(GemmBias::Scalar(v)) => v,
            };
            let pre = alpha as f64 * s + beta as f64 * cv as f64;
            pre_max = pre_max.max(pre.abs() as f32);
            out[i * n + j] = act_ref(act, pre);
        }
    }
    (out, pre_max)
}

#[test]
fn gemm_matches_reference() {
    let mut seed = 5;
    let shapes = [
        (1, 1, 1),
        (1, 1000, 2048),
        (4, 1000, 512),
        (7, 13, 5),
        (33, 17, 64),
        (64, 130, 96),
        (2, 3, 0),
    ];
    let mut case = 0;
    for &(m, n, k) in &shapes {
        for ta in [false, true] {
            for tb in [false, true] {
                for bias_kind in 0..5 {
                    for (alpha, beta) in [(1.0, 1.0), (0.5, 0.0), (1.5, -2.0)] {
                        case += 1;
                        let act = ACTS[case % ACTS.len()];
                        let a = rand_vec(m * k, &mut seed);
                        let b = rand_vec(k * n, &mut seed);
                        let row = rand_vec(n, &mut seed);
                        let full = rand_vec(m * n, &mut seed);
                        let col = rand_vec(m, &mut seed);
                        let c = match bias_kind {
                            0 => None,
                            1 => Some(GemmBias::Row(&row)),
                            2 => Some(GemmBias::Full(&full)),
                            3 => Some(GemmBias::Col(&col)),
                            _ => Some(GemmBias::Scalar(0.25)),
                        };
                        let (want, pre_max) =
                            gemm_ref(m, n, k, &a, ta, &b, tb, alpha, beta, c, act);
                        for t in [1, 2] {
                            let mut out = vec![f32::NAN; m * n];
                            pool(t).install(|| {
                                gemm(m, n, k, &a, ta, &b, tb, alpha, beta, c, act, &mut out)
                            });
                            assert_close_scaled(&out, &want, pre_max, &format!("gemm {m}x{n}x{k} ta{ta} tb{tb} bias{bias_kind} a{alpha} b{beta} {act:?} t{t}"));
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- pooling

/// ONNX Runtime semantics, written independently: output size from the
/// formula, windows clipped to the image, divisor from the padded extent.
fn pool_ref(
    p: &Pool2d,
    n_c: usize,
    h: usize,
    w: usize,
    x: &[f32],
    max: bool,
    include_pad: bool,
) -> Vec<f32> {
    let size = |len: usize, lo: usize, hi: usize, k: usize, d: usize, s: usize| {
        let num = (len + lo + hi) as f64 - ((k - 1) * d + 1) as f64;
        let mut o = if p.ceil_mode {
            (num / s as f64).ceil() as usize + 1
        } else {
            (num / s as f64).floor() as usize + 1
        };
        if p.ceil_mode && (o - 1) * s >= len + lo {
            o -= 1;
        }
        o
    };
    let oh = size(h, p.pads[0], p.pads[2], p.kh, p.dilation[0], p.stride[0]);
    let ow = size(w, p.pads[1], p.pads[3], p.kw, p.dilation[1], p.stride[1]);
    assert_eq!(p.out_hw(h, w), (oh, ow), "pool out_hw {p:?} {h}x{w}");
    let mut out = vec![0.0; n_c * oh * ow];
    for c in 0..n_c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut m, mut s, mut cnt_valid, mut cnt_pad) = (f32::MIN, 0.0f64, 0, 0);
                for ki in 0..p.kh {
                    for kj in 0..p.kw {
                        let iy =
                            (oy * p.stride[0] + ki * p.dilation[0]) as isize - p.pads[0] as isize;
                        let ix =
                            (ox * p.stride[1] + kj * p.dilation[1]) as isize - p.pads[1] as isize;
                        let in_padded =
                            iy < (h + p.pads[2]) as isize && ix < (w + p.pads[3]) as isize;
                        if in_padded {
                            cnt_pad += 1;
                        }
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let v = x[(c * h + iy as usize) * w + ix as usize];
                        m = m.max(v);
                        s += v as f64;
                        cnt_valid += 1;
                    }
                }
                let cnt = if include_pad { cnt_pad } else { cnt_valid };
                out[(c * oh + oy) * ow + ox] = if max {
                    m
                } else if cnt == 0 {
                    0.0
                } else {
                    (s / cnt as f64) as f32
                };
            }
        }
    }
    out
}

fn pl(
    k: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: [usize; 4],
    ceil_mode: bool,
) -> Pool2d {
    Pool2d {
        kh: k[0],
        kw: k[1],
        stride,
        dilation,
        pads,
        ceil_mode,
    }
}

fn check_pool(p: &Pool2d, n_c: usize, h: usize, w: usize, seed: &mut u64) {
    let x = rand_vec(n_c * h * w, seed);
    for t in [1, 2] {
        let tp = pool(t);
        let want = pool_ref(p, n_c, h, w, &x, true, false);
        let mut out = vec![f32::NAN; want.len()];
        tp.install(|| p.max(n_c, h, w, &x, &mut out));
        assert_close(&out, &want, &format!("maxpool {p:?} {n_c}x{h}x{w} t{t}"));
        for include_pad in [false, true] {
            let want = pool_ref(p, n_c, h, w, &x, false, include_pad);
            let mut out = vec![f32::NAN; want.len()];
            tp.install(|| p.avg(n_c, h, w, &x, include_pad, &mut out));
            assert_close(
                &out,
                &want,
                &format!("avgpool {p:?} {n_c}x{h}x{w} pad{include_pad} t{t}"),
            );
        }
    }
}

#[test]
fn pools_match_reference() {
    let mut seed = 6;
    let cases = [
        (pl([3, 3], [2, 2], [1, 1], [1; 4], false), 6, 16, 16), // ResNet stem maxpool
        (pl([3, 3], [2, 2], [1, 1], [1; 4], false), 3, 15, 13),
        (pl([2, 2], [2, 2], [1, 1], [0; 4], false), 4, 9, 7),
        (pl([2, 2], [2, 2], [1, 1], [0; 4], true), 4, 9, 7),
        (pl([3, 3], [2, 2], [1, 1], [0; 4], true), 2, 10, 12), // GoogLeNet-style ceil mode
        (pl([3, 3], [2, 2], [1, 1], [1, 0, 0, 1], true), 2, 8, 9),
        (pl([3, 2], [1, 3], [1, 1], [1, 0, 2, 1], false), 3, 7, 11),
        (pl([3, 3], [1, 1], [2, 2], [2; 4], false), 2, 9, 8),
        (pl([2, 3], [3, 2], [2, 1], [0, 2, 1, 1], true), 3, 11, 10),
        (pl([7, 7], [1, 1], [1, 1], [0; 4], false), 5, 7, 7), // global-like
        (pl([3, 3], [1, 1], [1, 1], [1; 4], false), 2, 1, 1),
    ];
    for (p, n_c, h, w) in &cases {
        check_pool(p, *n_c, *h, *w, &mut seed);
    }
}

#[test]
fn global_avg_pool_matches_reference() {
    let mut seed = 7;
    for (n_c, hw) in [(1, 1), (3, 49), (2048, 49), (17, 1000), (5, 7)] {
        let x = rand_vec(n_c * hw, &mut seed);
        let want: Vec<f32> = x
            .chunks(hw)
            .map(|c| (c.iter().map(|&v| v as f64).sum::<f64>() / hw as f64) as f32)
            .collect();
        let mut out = vec![f32::NAN; n_c];
        pool(2).install(|| global_avg_pool(n_c, hw, &x, &mut out));
        assert_close(&out, &want, &format!("gap {n_c}x{hw}"));
    }
}

// ---------------------------------------------------------------- activations

#[test]
fn activations_follow_onnx() {
    let xs = [-7.0f32, -3.0, -1.0, -0.25, 0.0, 0.3, 1.0, 2.5, 3.0, 6.5];
    for act in ACTS {
        let mut v = xs.to_vec();
        act.apply_slice(&mut v);
        for (&x, &y) in xs.iter().zip(&v) {
            let want = act_ref(act, x as f64);
            assert!(
                (act.apply(x) - want).abs() <= 1e-6,
                "{act:?}({x}) = {}, want {want}",
                act.apply(x)
            );
            assert_eq!(y, act.apply(x), "{act:?} slice vs scalar at {x}");
        }
    }
    assert_eq!(Activation::HardSwish.apply(-3.0), 0.0);
    assert_eq!(Activation::HardSwish.apply(3.0), 3.0);
    assert_eq!(Activation::Clip { min: 0.0, max: 6.0 }.apply(7.0), 6.0);
    assert_eq!(
        Activation::HardSigmoid {
            alpha: 0.2,
            beta: 0.5
        }
        .apply(0.0),
        0.5
    );
    assert_eq!(Activation::Relu.apply(-0.5), 0.0);
}

// ---------------------------------------------------------------- randomized

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn conv_random_shapes(
        n in 1usize..3, cig in 1usize..4, cog in 1usize..5, group in 1usize..4,
        h in 1usize..12, w in 1usize..12, kh in 1usize..6, kw in 1usize..6,
        sh in 1usize..4, sw in 1usize..4, dh in 1usize..3, dw in 1usize..3,
        pads in prop::array::uniform4(0usize..3), act in 0usize..6, dw_mult in 0usize..3,
        seed0 in any::<u64>(),
    ) {
        // dw_mult > 0: make it depthwise (group == c_in, c_out = mult * c_in).
        let c = if dw_mult > 0 {
            let c_in = cig * group + 1;
            cv(c_in, c_in * dw_mult, [kh, kw], [sh, sw], [dh, dw], pads, c_in)
        } else {
            cv(cig * group, cog * group, [kh, kw], [sh, sw], [dh, dw], pads, group)
        };
        let (oh, ow) = c.out_hw(h, w);
        prop_assume!(oh > 0 && ow > 0);
        let mut seed = seed0;
        check_conv(&c, n, h, w, ACTS[act], seed0 % 2 == 0, &[1, 2], &mut seed);
    }

    #[test]
    fn pool_random_shapes(
        n_c in 1usize..4, h in 1usize..12, w in 1usize..12, kh in 1usize..5, kw in 1usize..5,
        sh in 1usize..4, sw in 1usize..4, dh in 1usize..3, dw in 1usize..3,
        pads in prop::array::uniform4(0usize..3), ceil_mode in any::<bool>(), seed0 in any::<u64>(),
    ) {
        // ONNX requires pads smaller than the kernel.
        prop_assume!(pads[0] < kh && pads[2] < kh && pads[1] < kw && pads[3] < kw);
        let p = pl([kh, kw], [sh, sw], [dh, dw], pads, ceil_mode);
        let eh = (kh - 1) * dh + 1;
        let ew = (kw - 1) * dw + 1;
        prop_assume!(h + pads[0] + pads[2] >= eh && w + pads[1] + pads[3] >= ew);
        let mut seed = seed0;
        check_pool(&p, n_c, h, w, &mut seed);
    }
}

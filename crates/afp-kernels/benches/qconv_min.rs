//! The integer convolutions against FP32 on ResNet-50 shapes, interleaved: each round runs
//! the FP32 convolution, the integer one from f32 input and the integer one from codes (the
//! engine's form for every layer but the stem) once per shape and batch, and the report
//! gives each kernel's minimum and median over the rounds, and the ratios of FP32's to the
//! integer path's. On a machine whose speed drifts from minute to minute (a shared VM), a
//! criterion median mixes phases; minima of interleaved runs compare the kernels in the
//! same conditions. 2-thread rayon pool (AFP_BENCH_THREADS), 40 rounds (AFP_BENCH_ROUNDS).
//!
//! `cargo bench -p afp-kernels --bench qconv_min`

use std::time::Instant;

use afp_kernels::QScratch;

#[path = "shared/r50.rs"]
mod r50;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Minimum and median of `t` (seconds), in microseconds.
fn min_median(t: &mut [f64]) -> (f64, f64) {
    t.sort_by(f64::total_cmp);
    (t[0] * 1e6, t[t.len() / 2] * 1e6)
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter may follow.
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let threads = env("AFP_BENCH_THREADS", 2);
    let rounds = env("AFP_BENCH_ROUNDS", 40).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    println!("{threads} threads, {rounds} interleaved rounds; times in us: minimum / median");
    println!(
        "{:26} {:>3} {:>19} {:>19} {:>19}  {:>13} {:>13}",
        "shape", "n", "fp32", "int", "int from codes", "fp32/int", "fp32/codes"
    );
    for shape in r50::SHAPES.iter().filter(|s| s.0.contains(&filter)) {
        let layer = r50::Layer::new(shape);
        let codes_layer = layer.q.reading_quads().ok();
        for n in [1usize, 8] {
            let hw = layer.hw;
            let input = layer.input(n);
            let codes = codes_layer
                .as_ref()
                .map(|_| layer.q.encode_input_quads(n, hw, hw, &input).unwrap());
            let mut out = vec![0f32; layer.out_len(n)];
            let (mut scratch, mut qs) = (Vec::new(), QScratch::default());
            let (mut tf, mut ti, mut tc) = (Vec::new(), Vec::new(), Vec::new());
            pool.install(|| {
                for _ in 0..rounds {
                    let t = Instant::now();
                    layer.run_fp32(n, &input, &mut out, &mut scratch);
                    tf.push(t.elapsed().as_secs_f64());
                    let t = Instant::now();
                    layer.q.run(n, hw, hw, &input, &mut out, &mut qs);
                    ti.push(t.elapsed().as_secs_f64());
                    if let (Some(qr), Some(c)) = (&codes_layer, &codes) {
                        let t = Instant::now();
                        qr.run(n, hw, hw, c, &mut out, &mut qs);
                        tc.push(t.elapsed().as_secs_f64());
                    }
                }
            });
            let (f, i) = (min_median(&mut tf), min_median(&mut ti));
            let c = (!tc.is_empty()).then(|| min_median(&mut tc));
            let cell = |(a, b): (f64, f64)| format!("{a:9.1} / {b:9.1}");
            let ratio = |x: (f64, f64)| format!("{:5.2} / {:5.2}", f.0 / x.0, f.1 / x.1);
            println!(
                "{:26} {:>3} {:>19} {:>19} {:>19}  {:>13} {:>13}",
                shape.0,
                n,
                cell(f),
                cell(i),
                c.map_or("-".into(), cell),
                ratio(i),
                c.map_or("-".into(), ratio)
            );
        }
    }
}

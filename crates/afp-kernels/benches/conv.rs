//! Convolution throughput on ResNet-50 and MobileNet-v2 shapes, batch 1 and 8,
//! in a 2-thread rayon pool (override with AFP_BENCH_THREADS). Throughput is
//! reported as elements/s where one element is one FLOP (2 per MAC), i.e.
//! "Gelem/s" reads as GFLOP/s.

use std::time::Duration;

use afp_kernels::{Activation, Conv2d};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

struct Shape {
    name: &'static str,
    c_in: usize,
    c_out: usize,
    hw: usize,
    k: usize,
    stride: usize,
    pad: usize,
    group: usize,
    act: Activation,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "r50_stem_224x3_7x7s2_64",
        c_in: 3,
        c_out: 64,
        hw: 224,
        k: 7,
        stride: 2,
        pad: 3,
        group: 1,
        act: Activation::Relu,
    },
    Shape {
        name: "r50_56x64_3x3_64",
        c_in: 64,
        c_out: 64,
        hw: 56,
        k: 3,
        stride: 1,
        pad: 1,
        group: 1,
        act: Activation::Relu,
    },
    Shape {
        name: "r50_56x256_1x1_64",
        c_in: 256,
        c_out: 64,
        hw: 56,
        k: 1,
        stride: 1,
        pad: 0,
        group: 1,
        act: Activation::Relu,
    },
    Shape {
        name: "r50_56x64_1x1_256",
        c_in: 64,
        c_out: 256,
        hw: 56,
        k: 1,
        stride: 1,
        pad: 0,
        group: 1,
        act: Activation::None,
    },
    Shape {
        name: "r50_14x256_3x3_256",
        c_in: 256,
        c_out: 256,
        hw: 14,
        k: 3,
        stride: 1,
        pad: 1,
        group: 1,
        act: Activation::Relu,
    },
    Shape {
        name: "r50_7x512_1x1_2048",
        c_in: 512,
        c_out: 2048,
        hw: 7,
        k: 1,
        stride: 1,
        pad: 0,
        group: 1,
        act: Activation::None,
    },
    Shape {
        name: "mv2_dw_112x32_3x3",
        c_in: 32,
        c_out: 32,
        hw: 112,
        k: 3,
        stride: 1,
        pad: 1,
        group: 32,
        act: Activation::Clip { min: 0.0, max: 6.0 },
    },
    Shape {
        name: "mv2_dw_56x144_3x3s2",
        c_in: 144,
        c_out: 144,
        hw: 56,
        k: 3,
        stride: 2,
        pad: 1,
        group: 144,
        act: Activation::Clip { min: 0.0, max: 6.0 },
    },
];

fn bench(c: &mut Criterion) {
    let threads: usize = std::env::var("AFP_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut group = c.benchmark_group(format!("conv_t{threads}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for s in SHAPES {
        let conv = Conv2d {
            c_in: s.c_in,
            c_out: s.c_out,
            kh: s.k,
            kw: s.k,
            stride: [s.stride; 2],
            dilation: [1, 1],
            pads: [s.pad; 4],
            group: s.group,
        };
        let (oh, ow) = conv.out_hw(s.hw, s.hw);
        let weight: Vec<f32> = (0..s.c_out * s.c_in / s.group * s.k * s.k)
            .map(|i| ((i % 7) as f32 - 3.0) * 0.01)
            .collect();
        let bias: Vec<f32> = (0..s.c_out).map(|i| i as f32 * 0.001).collect();
        // As the engine runs it: a 3x3 layer Winograd's F(2x2, 3x3) takes with its weights
        // transformed once.
        let winograd = conv.winograd_weights(s.hw, s.hw, &weight);
        for n in [1usize, 8] {
            let input: Vec<f32> = (0..n * s.c_in * s.hw * s.hw)
                .map(|i| ((i % 13) as f32 - 6.0) * 0.1)
                .collect();
            let mut out = vec![0.0f32; n * s.c_out * oh * ow];
            let mut scratch = Vec::new();
            let macs = n * s.c_out * oh * ow * (s.c_in / s.group) * s.k * s.k;
            group.throughput(Throughput::Elements(2 * macs as u64));
            group.bench_with_input(BenchmarkId::new(s.name, format!("n{n}")), &n, |b, &n| {
                pool.install(|| {
                    b.iter(|| {
                        match &winograd {
                            Some(ww) => conv.run_add_winograd(
                                n,
                                s.hw,
                                s.hw,
                                black_box(&input),
                                ww,
                                Some(&bias),
                                None,
                                s.act,
                                &mut out,
                                &mut scratch,
                            ),
                            None => conv.run(
                                n,
                                s.hw,
                                s.hw,
                                black_box(&input),
                                &weight,
                                Some(&bias),
                                s.act,
                                &mut out,
                                &mut scratch,
                            ),
                        }
                        black_box(&out);
                    })
                })
            });
        }
    }
    group.finish();

    // Raw GEMM ceiling for comparison: out[m, n] = W[m, k] x col[k, n].
    let mut group = c.benchmark_group(format!("gemm_t{threads}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (m, n, k) in [
        (64usize, 3136usize, 576usize),
        (64, 3136, 256),
        (256, 196, 2304),
        (2048, 49, 512),
    ] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 3) as f32 * 0.1).collect();
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        group.bench_function(format!("{m}x{n}x{k}"), |bch| {
            pool.install(|| {
                bch.iter(|| {
                    afp_kernels::gemm(
                        m,
                        n,
                        k,
                        black_box(&a),
                        false,
                        &b,
                        false,
                        1.0,
                        0.0,
                        None,
                        Activation::None,
                        &mut out,
                    );
                    black_box(&out);
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

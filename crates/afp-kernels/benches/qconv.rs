//! The packed integer path against the FP32 kernels on the same shapes, in one run: ResNet-50
//! convolutions (5-bit E2M2 weights as integers |n| <= 28, 8-bit uE0M8 activations) and a
//! batch-1 Gemm. The integer convolution is timed from f32 input (`afp_int`, its encoding
//! included) and from codes (`afp_int_codes`, as handed over between layers; not for the
//! stem, whose tap-row input no layer hands over). 2-thread rayon
//! pool (override with AFP_BENCH_THREADS). Throughput is elements/s with one element per FLOP
//! (2 per MAC), so "Gelem/s" reads as GFLOP/s; the integer path counts its multiply-adds the
//! same way.

use std::time::Duration;

use afp_kernels::{Activation, CodedWeights, LookupGemm, QGemm, QScratch};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "shared/r50.rs"]
mod r50;

fn bench(c: &mut Criterion) {
    let threads: usize = std::env::var("AFP_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut group = c.benchmark_group(format!("qconv_t{threads}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for shape in r50::SHAPES {
        let name = shape.0;
        let layer = r50::Layer::new(shape);
        let r50::Layer { q, hw, .. } = &layer;
        let hw = *hw;
        for n in [1usize, 8] {
            let input = layer.input(n);
            let mut out = vec![0.0f32; layer.out_len(n)];
            let macs = layer.macs(n);
            group.throughput(Throughput::Elements(2 * macs as u64));
            let mut scratch = Vec::new();
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/fp32"), format!("n{n}")),
                &n,
                |b, &n| {
                    pool.install(|| {
                        b.iter(|| {
                            layer.run_fp32(n, black_box(&input), &mut out, &mut scratch);
                            black_box(&out);
                        })
                    })
                },
            );
            let mut qs = QScratch::default();
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/afp_int"), format!("n{n}")),
                &n,
                |b, &n| {
                    pool.install(|| {
                        b.iter(|| {
                            q.run(n, hw, hw, black_box(&input), &mut out, &mut qs);
                            black_box(&out);
                        })
                    })
                },
            );
            // From codes: the input as the channel quads a producer hands over (as 32 of
            // ResNet-50's 54 layers receive it in the engine), so only the GEMM (with im2col
            // where the kernel needs it) and its epilogue are timed. The stem reads its
            // input in tap rows, which no producer hands over: it has no such variant.
            let Ok(qr) = q.reading_quads() else {
                continue;
            };
            let codes = q.encode_input_quads(n, hw, hw, &input).unwrap();
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/afp_int_codes"), format!("n{n}")),
                &n,
                |b, &n| {
                    pool.install(|| {
                        b.iter(|| {
                            qr.run(n, hw, hw, black_box(&codes), &mut out, &mut qs);
                            black_box(&out);
                        })
                    })
                },
            );
        }
    }
    group.finish();

    // Batch-1 Gemm: memory bound, weights read once per image.
    let mut group = c.benchmark_group(format!("qgemm_b1_t{threads}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for (m, k) in [(1000usize, 2048usize), (4096, 4096)] {
        // E2M1 (4-bit) weight integers: 15 distinct values, so the Gemm keeps a nibble copy.
        const E2M1: [i32; 15] = [-12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12];
        let w_int: Vec<i32> = (0..m * k).map(|i| E2M1[i * 7 % 15]).collect();
        let weight: Vec<f32> = w_int.iter().map(|&v| v as f32 / 64.0).collect();
        let x: Vec<f32> = (0..k).map(|i| (i % 11) as f32 * 0.3).collect();
        let mut out = vec![0f32; m];
        let q = QGemm::new(
            m,
            k,
            &w_int,
            12,
            r50::encoder(),
            vec![1.0 / 64.0 / 64.0; m],
            None,
            Activation::None,
        )
        .unwrap();
        group.throughput(Throughput::Elements(2 * (m * k) as u64));
        group.bench_function(format!("{m}x{k}/fp32"), |b| {
            pool.install(|| {
                b.iter(|| {
                    afp_kernels::gemm(
                        1,
                        m,
                        k,
                        black_box(&x),
                        false,
                        &weight,
                        true,
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
        let mut qs = QScratch::default();
        group.bench_function(format!("{m}x{k}/afp_int"), |b| {
            pool.install(|| {
                b.iter(|| {
                    q.run(1, black_box(&x), &mut out, &mut qs);
                    black_box(&out);
                })
            })
        });
        // The lookup path on the same weights: one code byte each, decoded (in registers
        // where the CPU has AVX-512) and multiplied in f32.
        let table: Vec<f32> = E2M1.iter().map(|&v| v as f32).collect();
        let codes: Vec<u8> = w_int
            .iter()
            .map(|v| E2M1.iter().position(|e| e == v).unwrap() as u8)
            .collect();
        let coded = CodedWeights::new(m, k, codes, &table, vec![1.0 / 64.0; m]).unwrap();
        let lg = LookupGemm::new(coded, 1.0, None, Activation::None).unwrap();
        group.bench_function(format!("{m}x{k}/afp_lookup"), |b| {
            pool.install(|| {
                b.iter(|| {
                    lg.run(1, black_box(&x), &mut out);
                    black_box(&out);
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Bulk throughput of the codec: encode, decode through a lookup table, pack and unpack.
//! Run: `cargo bench -p afp-format --bench codec`; results go in docs/BENCHMARKS.md.

use afp_format::{pack, Format, Grid, Lut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const N: usize = 1 << 20;

/// Deterministic pseudo-random weights, roughly normal (sum of uniforms), scale 0.05.
fn data() -> Vec<f32> {
    let mut s = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..N)
        .map(|_| (next() + next() + next() + next() - 2.0) * 0.05)
        .collect()
}

fn codec(c: &mut Criterion) {
    let xs = data();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(N as u64));
    for (e, m) in [(2u32, 1u32), (3, 2), (4, 3), (0, 7)] {
        let f = Format::signed(e, m).unwrap();
        let grid = Grid::new(f, afp_format::offset::cover(f, &xs).unwrap()).unwrap();
        let mut codes = vec![0u8; N];
        g.bench_with_input(BenchmarkId::new("encode", f.name()), &xs, |b, xs| {
            b.iter(|| grid.encode_slice(black_box(xs), &mut codes).unwrap())
        });
        let lut = Lut::new(&grid);
        let mut out = vec![0f32; N];
        g.bench_with_input(BenchmarkId::new("decode_lut", f.name()), &codes, |b, c| {
            b.iter(|| lut.decode_slice(black_box(c), &mut out))
        });
        let w = f.bits();
        g.bench_with_input(BenchmarkId::new("pack", w), &codes, |b, c| {
            b.iter(|| pack::pack(black_box(c), w).unwrap())
        });
        let packed = pack::pack(&codes, w).unwrap();
        let mut back = vec![0u8; N];
        g.bench_with_input(BenchmarkId::new("unpack", w), &packed, |b, p| {
            b.iter(|| pack::unpack_into(black_box(p), w, &mut back).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);

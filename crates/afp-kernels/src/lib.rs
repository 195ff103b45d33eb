//! FP32 compute kernels for afpq: NCHW convolution (im2col + GEMM, direct
//! depthwise), ONNX-style GEMM with fused bias/activation epilogue, pooling
//! and activations.
//!
//! All kernels run inside whatever rayon pool the caller installed
//! (`rayon::current_num_threads()` decides how work is split), and are
//! deterministic for a given thread count.
//!
//! Every `unsafe` block states its soundness argument: the call into the
//! `gemm` crate ([`matmul`](crate::matmul), the portable GEMM path), the
//! AVX2+FMA and AVX-512 GEMM micro-kernels (`sgemm`, bounds asserted before raw-pointer
//! access; output tiles of different threads are disjoint), the AVX2
//! depthwise row kernel (`depthwise`), the AVX-512 1x1 convolution tiles (`pointwise`),
//! and the integer kernels (`qgemm`,
//! `qconv`: AVX-512 VNNI and AVX2). The vector paths are selected at run
//! time with `is_x86_feature_detected!`.

mod activation;
mod conv;
mod depthwise;
mod dot;
mod lookup;
mod matmul;
mod pointwise;
mod pool;
pub mod qconv;
pub mod qgemm;
mod sgemm;
mod tap_rows;
mod winograd;

pub use activation::Activation;
pub use conv::Conv2d;
pub use lookup::{CodedWeights, LookupConv, LookupGemm};
pub use matmul::{gemm, GemmBias};
pub use pool::{global_avg_pool, Pool2d};
pub use qconv::{quads_f32_len, quads_fit, ActEncoder, QConv, QGemm, QScratch};
pub use winograd::WinogradWeights;

#[doc(hidden)]
pub use matmul::{matmul, threads_for, MatLayout};

/// Writes `src`'s even-indexed elements, then its odd-indexed ones, to `dst` (same length):
/// a stride-2 window then reads one contiguous run of one half.
#[inline]
pub(crate) fn split_even_odd<T: Copy>(src: &[T], dst: &mut [T]) {
    assert_eq!(src.len(), dst.len(), "split_even_odd: lengths");
    let (ev, od) = dst.split_at_mut(src.len().div_ceil(2));
    for ((e, o), pair) in ev.iter_mut().zip(od).zip(src.chunks_exact(2)) {
        (*e, *o) = (pair[0], pair[1]);
    }
    if src.len() % 2 == 1 {
        ev[ev.len() - 1] = src[src.len() - 1];
    }
}

/// Where element `x` of a `len`-long row lands in [`split_even_odd`]'s output.
pub(crate) fn split_index(x: usize, len: usize) -> usize {
    if x.is_multiple_of(2) {
        x / 2
    } else {
        len.div_ceil(2) + x / 2
    }
}

/// Deterministic pseudo-random test data shared by the unit tests.
#[cfg(test)]
mod test_rand {
    /// Held by the tests that flip the kernels' `FORCE_PORTABLE` switches, so a test that
    /// compares two runs bit for bit sees both on the same path.
    pub(crate) static KERNEL_PATH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub(crate) fn rand_vec(len: usize, seed: &mut u64) -> Vec<f32> {
        (0..len).map(|_| lcg(seed)).collect()
    }
}

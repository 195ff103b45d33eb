//! FP32 compute kernels for afpq: NCHW convolution (im2col + GEMM, direct
//! depthwise), ONNX-style GEMM with fused bias/activation epilogue, pooling
//! and activations.
//!
//! All kernels run inside whatever rayon pool the caller installed
//! (`rayon::current_num_threads()` decides how work is split), and are
//! deterministic for a given thread count.
//!
//! `unsafe` code lives in three places, each with its soundness argument:
//! the call into the `gemm` crate ([`matmul`](crate::matmul), the portable
//! GEMM path), the AVX2+FMA GEMM micro-kernel (`sgemm`, bounds asserted
//! before raw-pointer access; output tiles of different threads are
//! disjoint) and the AVX2 depthwise row kernel (`depthwise`). The AVX2 paths
//! are selected at run time with `is_x86_feature_detected!`.

mod activation;
mod conv;
mod depthwise;
mod matmul;
mod pool;
mod sgemm;

pub use activation::Activation;
pub use conv::Conv2d;
pub use matmul::{gemm, GemmBias};
pub use pool::{global_avg_pool, Pool2d};

#[doc(hidden)]
pub use matmul::{matmul, MatLayout};

//! FP32 compute kernels for afpq: NCHW convolution (im2col + GEMM, direct
//! depthwise), ONNX-style GEMM with fused bias/activation epilogue, pooling
//! and activations.
//!
//! All kernels run inside whatever rayon pool the caller installed
//! (`rayon::current_num_threads()` decides how work is split), and are
//! deterministic for a given thread count.
//!
//! The only `unsafe` code of the crate is the single call into the `gemm`
//! crate, wrapped by [`matmul`](crate::matmul) with its soundness argument.

mod activation;
mod conv;
mod depthwise;
mod matmul;
mod pool;

pub use activation::Activation;
pub use conv::Conv2d;
pub use matmul::{gemm, GemmBias};
pub use pool::{global_avg_pool, Pool2d};

#[doc(hidden)]
pub use matmul::{matmul, MatLayout};

//! afpq's inference engine.
//!
//! [`Model::load`] reads an ONNX file and checks its operators; [`Model::lower`] builds the
//! [`Graph`] for one batch size (shape inference, constant folding, BatchNorm and Pad folding,
//! activation fusion; residual Adds fused into convolutions for inference); [`Session`] runs it with planned, reused buffers on a rayon pool.

mod error;
pub mod exec;
pub mod fold;
pub mod import;
pub mod ir;
pub mod ops;
pub mod passes;
pub mod tensor;

pub use error::{EngineError, Result};
pub use exec::Session;
pub use import::Model;
pub use ir::{Graph, Node, Op, Value, ValueId};
pub use tensor::{Const, ConstData};

impl Model {
    /// Lowers for `batch`, fuses residual Adds into their convolutions (inference only) and
    /// prepares a session with `threads` threads.
    pub fn session(&self, batch: usize, threads: usize) -> Result<Session> {
        let mut g = self.lower(batch)?;
        passes::fuse_residual_add(&mut g);
        exec::check_runtime_types(&g)?;
        Session::new(g, threads)
    }
}

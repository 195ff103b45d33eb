use std::path::PathBuf;

/// Everything that can go wrong reading, writing or interpreting an ONNX model.
///
/// Each message names the file, tensor or node concerned and what is wrong with it, and
/// ends with the underlying error's message where there is one (so none is also reported as
/// `source()`: an error chain would print it twice).
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// A file could not be read, written, renamed or synced.
    #[error("{action} {}: {cause}", path.display())]
    Io {
        /// What was being done ("cannot read ONNX model", ...).
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The bytes are not a valid ONNX `ModelProto`.
    #[error("{origin}: not a valid ONNX model (protobuf decoding failed: {cause})")]
    Decode {
        /// The file name, or `<bytes>` for [`crate::decode_model`].
        origin: String,
        /// The protobuf error.
        cause: prost::DecodeError,
    },
    /// The bytes decode as protobuf but lack what every ONNX model has.
    #[error("{origin}: not an ONNX model: {reason}")]
    NotAModel {
        /// The file name, or `<bytes>` for [`crate::decode_model`].
        origin: String,
        /// What is missing.
        reason: String,
    },
    /// An external-data tensor could not be loaded.
    #[error("{}: tensor '{tensor}': external data: {reason}", model.display())]
    ExternalData {
        /// The model file.
        model: PathBuf,
        /// The tensor whose data is external.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor's type, shape or data is invalid or unsupported for the requested access.
    #[error("tensor '{tensor}': {reason}")]
    Tensor {
        /// The tensor's name (may be empty for anonymous attribute tensors).
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The encoded model is larger than protobuf's 2 GiB message limit.
    #[error("{}: encoded model is {size} bytes, over protobuf's 2 GiB limit", path.display())]
    TooLarge {
        /// The file that was to be written.
        path: PathBuf,
        /// The encoded size in bytes.
        size: usize,
    },
}

impl OnnxError {
    pub(crate) fn tensor(tensor: &str, reason: impl Into<String>) -> Self {
        OnnxError::Tensor {
            tensor: tensor.to_string(),
            reason: reason.into(),
        }
    }
}

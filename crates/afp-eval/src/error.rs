//! Error type of the crate: every variant that concerns a file names it.

use std::path::PathBuf;

/// Errors of `afp-eval`. A variant's message ends with its cause's, so no variant reports
/// that cause again as `source()` (an error chain would print it twice).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// A JSON file (model card) could not be parsed.
    #[error("{}: invalid JSON: {cause}", path.display())]
    Json {
        path: PathBuf,
        cause: serde_json::Error,
    },
    /// A model card parsed but holds an unusable value.
    #[error("{}: invalid model card: {msg}", path.display())]
    Card { path: PathBuf, msg: String },
    /// An image could not be decoded.
    #[error("{}: cannot decode image: {cause}", path.display())]
    Decode {
        path: PathBuf,
        cause: image::ImageError,
    },
    /// A dataset folder is missing, empty or malformed.
    #[error("{}: {msg}", path.display())]
    Dataset { path: PathBuf, msg: String },
    /// A line of a text list (labels.txt, classes.txt, top-5 file) is malformed.
    #[error("{}:{line}: {msg}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A `.npy` file is malformed or not a little-endian float32 C-order array.
    #[error("{}: {msg}", path.display())]
    Npy { path: PathBuf, msg: String },
    /// A caller-provided buffer has the wrong length.
    #[error("{what}: buffer holds {got} values, expected {expected}")]
    BufferSize {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// An invalid argument (e.g. an index out of range, an unknown preset).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }
}

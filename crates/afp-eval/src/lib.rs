//! `afp-eval`: everything about images and accuracy for afpq, independent of any inference engine.
//!
//! * [`card`]: model cards (`models/<name>.json`) and path resolution against the data root.
//! * [`preprocess`]: decoding (the `image` crate) and preprocessing into CHW float32, with a Pillow-exact
//!   BILINEAR resize ([`resize`]).
//! * [`dataset`]: labelled image folders, `--limit` and calibration selections.
//! * [`batch`]: parallel batch loading with rayon into a caller-provided buffer.
//! * [`metrics`]: top-k, accuracy and agreement counters.
//! * [`npy`]: little-endian float32 `.npy` files.
#![forbid(unsafe_code)]

pub mod batch;
pub mod card;
pub mod dataset;
pub mod error;
pub mod evaluate;
pub mod metrics;
pub mod npy;
pub mod preprocess;
pub mod resize;

pub use batch::{load_batch, load_batch_vec};
pub use card::{list_cards, Card, Dim, OutputKind, PreprocessSpec, ReferenceAccuracy};
pub use dataset::{
    calibration_indices, read_reference_top5, strided_indices, Dataset, ReferenceTop5, Sample,
};
pub use error::{Error, Result};
pub use evaluate::{evaluate, Evaluation};
pub use metrics::{argmax, pred_to_label, top1_agreement, top_k, Accuracy, Agreement};
pub use npy::{read_npy, write_npy, NpyF32};
pub use preprocess::{decode_rgb8, decode_rgb8_bytes, ChannelOrder, Preprocess, PRESET_NAMES};
pub use resize::resize_bilinear_pillow;

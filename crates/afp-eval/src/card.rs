//! Model cards (`models/<name>.json`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::preprocess::Preprocess;

/// One dimension of an input/output shape: a fixed size or a symbolic name (`"N"` = dynamic batch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(u64),
    Symbolic(String),
}

impl Dim {
    /// The fixed size, `None` for a symbolic dimension.
    pub fn fixed(&self) -> Option<u64> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Symbolic(_) => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// What the graph output holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// The graph ends in Softmax: probabilities.
    Softmax,
    /// Raw logits.
    Logits,
}

/// The `preprocess` object of a card, as written in the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessSpec {
    #[serde(default)]
    pub resize_shorter: Option<u32>,
    pub crop: u32,
    #[serde(default = "default_interpolation")]
    pub interpolation: String,
    #[serde(default = "default_channel_order")]
    pub channel_order: String,
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub mean: [f64; 3],
    #[serde(default = "default_std")]
    pub std: [f64; 3],
}

fn default_interpolation() -> String {
    "bilinear".into()
}
fn default_channel_order() -> String {
    "RGB".into()
}
fn default_scale() -> f64 {
    1.0
}
fn default_std() -> [f64; 3] {
    [1.0; 3]
}

/// The `reference` object of a card: FP32 accuracy measured on the whole dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceAccuracy {
    pub top1: f64,
    pub top5: f64,
    pub images: usize,
    pub top1_correct: usize,
    pub top5_correct: usize,
    #[serde(default)]
    pub runtime: Option<String>,
    #[serde(default)]
    pub per_image_top5: Option<String>,
}

/// A model card. Unknown fields are ignored; only `name`, `file`, `input_name` and `preprocess` are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Card {
    pub name: String,
    /// ONNX file, relative to the data root.
    pub file: String,
    #[serde(default)]
    pub file_bytes: Option<u64>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub license: Option<String>,
    #[serde(default)]
    pub published_accuracy: Option<String>,
    #[serde(default)]
    pub onnx_opset: Option<u32>,
    pub input_name: String,
    #[serde(default)]
    pub input_shape: Vec<Dim>,
    #[serde(default)]
    pub layout: Option<String>,
    pub preprocess: PreprocessSpec,
    #[serde(default)]
    pub output_name: Option<String>,
    #[serde(default)]
    pub output_shape: Vec<Dim>,
    #[serde(default)]
    pub num_classes: Option<usize>,
    #[serde(default)]
    pub output: Option<OutputKind>,
    /// Predicted class index minus `label_offset` = label index.
    #[serde(default)]
    pub label_offset: i64,
    /// Dataset folder, relative to the data root.
    #[serde(default)]
    pub dataset: Option<String>,
    #[serde(default)]
    pub reference: Option<ReferenceAccuracy>,
    /// Files in `reference/` (keys `input`, `output`, ...), relative to the data root.
    #[serde(default)]
    pub reference_tensors: BTreeMap<String, String>,
    #[serde(default)]
    pub params: Option<u64>,
    #[serde(default)]
    pub params_note: Option<String>,
    #[serde(default)]
    pub macs: Option<u64>,
    #[serde(default)]
    pub macs_by_op: BTreeMap<String, u64>,
    #[serde(default)]
    pub macs_note: Option<String>,
    #[serde(default)]
    pub op_types: BTreeMap<String, u64>,
    #[serde(default)]
    pub nodes: Option<u64>,
    #[serde(default)]
    pub notes: Vec<String>,

    /// Data root (the folder above `models/`) that relative paths are resolved against.
    #[serde(skip)]
    pub root: PathBuf,
    /// Where the card was loaded from.
    #[serde(skip)]
    pub card_path: PathBuf,
    /// Overrides `dataset` when set.
    #[serde(skip)]
    pub dataset_override: Option<PathBuf>,
}

impl Card {
    /// Load a card; the data root is the folder above the card's folder (`<root>/models/<name>.json`).
    pub fn load(path: impl AsRef<Path>) -> Result<Card> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut card: Card = serde_json::from_str(&text).map_err(|cause| Error::Json {
            path: path.to_path_buf(),
            cause,
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        card.root = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => dir.join(".."),
        };
        card.card_path = path.to_path_buf();
        // Validate the preprocessing spec now so errors name the card.
        card.preprocess()?;
        Ok(card)
    }

    /// Load `<root>/models/<name>.json`.
    pub fn load_named(root: impl AsRef<Path>, name: &str) -> Result<Card> {
        Card::load(root.as_ref().join("models").join(format!("{name}.json")))
    }

    /// Resolve a path written in the card (relative to the data root); absolute paths stay as they are.
    pub fn resolve(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// Path of the ONNX model file.
    pub fn model_path(&self) -> PathBuf {
        self.resolve(&self.file)
    }

    /// Dataset folder: the override if set, else the card's `dataset` resolved against the root.
    pub fn dataset_dir(&self) -> Option<PathBuf> {
        self.dataset_override
            .clone()
            .or_else(|| self.dataset.as_ref().map(|d| self.resolve(d)))
    }

    /// Use another dataset folder than the card's.
    pub fn set_dataset_dir(&mut self, dir: impl Into<PathBuf>) {
        self.dataset_override = Some(dir.into());
    }

    /// A file of `reference_tensors` (`"input"`, `"output"`, ...), resolved.
    pub fn reference_tensor(&self, key: &str) -> Option<PathBuf> {
        self.reference_tensors.get(key).map(|p| self.resolve(p))
    }

    /// The per-image top-5 reference file, resolved.
    pub fn reference_top5_path(&self) -> Option<PathBuf> {
        self.reference
            .as_ref()
            .and_then(|r| r.per_image_top5.as_ref())
            .map(|p| self.resolve(p))
    }

    /// The preprocessing of this card.
    pub fn preprocess(&self) -> Result<Preprocess> {
        Preprocess::from_spec(&self.preprocess).map_err(|msg| Error::Card {
            path: self.card_path.clone(),
            msg,
        })
    }

    /// Input height/width from `input_shape` (NCHW), if fixed.
    pub fn input_hw(&self) -> Option<(u64, u64)> {
        if self.input_shape.len() != 4 {
            return None;
        }
        Some((self.input_shape[2].fixed()?, self.input_shape[3].fixed()?))
    }
}

/// Paths of all cards `<root>/models/*.json`, sorted by name.
pub fn list_cards(root: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = root.as_ref().join("models");
    let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let p = entry.map_err(|e| Error::io(&dir, e))?.path();
        if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

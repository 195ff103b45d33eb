//! What several commands share: finding the model and the images, progress bars, threads.

use afp_eval::{Card, Dataset, Preprocess};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

/// Where the images and their preprocessing come from: a model card, or a preset and labels.
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Model card (JSON, schema of ../shared/data/README.md): preprocessing, dataset, labels.
    #[arg(long)]
    pub card: Option<PathBuf>,
    /// Image folder (default: the card's dataset). Holds labels.txt or <class>/ subfolders.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Labels file (`<file> <class>` per line) for --data, when it is not DATA/labels.txt.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Preprocessing preset when there is no card: torchvision, caffe, tf or raw.
    #[arg(long)]
    pub preprocess: Option<String>,
    /// Crop size for --preprocess (default 224; for raw, the image size).
    #[arg(long)]
    pub crop: Option<u32>,
}

pub struct DataSource {
    pub card: Option<Card>,
    pub preprocess: Preprocess,
    pub label_offset: i64,
}

impl DataArgs {
    pub fn card(&self) -> Result<Option<Card>> {
        self.card
            .as_ref()
            // Every error of `Card::load` names the file.
            .map(|p| Card::load(p).context("reading the model card"))
            .transpose()
    }

    /// The preprocessing (card, or preset), without needing a dataset.
    pub fn source(&self) -> Result<DataSource> {
        let card = self.card()?;
        let preprocess = match (&card, &self.preprocess) {
            (_, Some(p)) => Preprocess::preset(p, self.crop)
                .with_context(|| format!("preprocessing preset {p:?}"))?,
            (Some(c), None) => c.preprocess().context("the card's preprocessing")?,
            (None, None) => {
                bail!("give --card CARD.json, or --preprocess PRESET (torchvision, caffe, tf, raw)")
            }
        };
        let label_offset = card.as_ref().map(|c| c.label_offset).unwrap_or(0);
        Ok(DataSource {
            card,
            preprocess,
            label_offset,
        })
    }

    /// The labelled dataset: --data (with --labels) or the card's dataset.
    pub fn dataset(&self, src: &DataSource) -> Result<Dataset> {
        let dir = match (&self.data, &src.card) {
            (Some(d), _) => d.clone(),
            (None, Some(c)) => c
                .dataset_dir()
                .context("the card names no dataset; give --data DIR")?,
            (None, None) => bail!("give --data DIR (with --preprocess) or --card CARD.json"),
        };
        let ds = match &self.labels {
            Some(l) => Dataset::open_with_labels(&dir, l),
            None => Dataset::open(&dir),
        };
        // The dataset's errors name the folder or the file concerned.
        ds.context("opening the image folder")
    }
}

/// The model path: given, or the card's.
pub fn model_path(model: Option<&Path>, card: Option<&Card>) -> Result<PathBuf> {
    match (model, card) {
        (Some(m), _) => Ok(m.to_path_buf()),
        (None, Some(c)) => Ok(c.model_path()),
        (None, None) => bail!("give a MODEL file (or a --card that names one)"),
    }
}

pub fn load_model(path: &Path) -> Result<afp_engine::Model> {
    use afp_onnx::OnnxError as E;
    afp_engine::Model::load(path).map_err(|e| match e {
        // Errors reading the file name it already.
        afp_engine::EngineError::Onnx(
            E::Io { .. } | E::Decode { .. } | E::NotAModel { .. } | E::ExternalData { .. },
        ) => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context(format!("loading model {}", path.display())),
    })
}

pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `--json` and `--quiet`: every command that prints results has both.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct OutputArgs {
    /// Print the results as one JSON object (or array) on stdout, and no progress bar.
    #[arg(long)]
    pub json: bool,
    /// Nothing on stderr but errors: no progress bar, no notes.
    #[arg(long, short)]
    pub quiet: bool,
}

impl OutputArgs {
    /// Progress bars are hidden with --quiet, and with --json (whose reader is a program).
    pub fn no_progress(&self) -> bool {
        self.quiet || self.json
    }

    /// A note on stderr, unless --quiet.
    pub fn note(&self, text: &str) {
        if !self.quiet {
            eprintln!("note: {text}");
        }
    }
}

/// `--threads`, for commands that run the engine.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct ThreadsArg {
    /// Threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ThreadsArg {
    pub fn get(&self) -> usize {
        self.threads.unwrap_or_else(default_threads)
    }
}

/// Which images of a dataset, how many at a time, on how many threads.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct RunArgs {
    /// Evaluate the first N images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    #[command(flatten)]
    pub threads: ThreadsArg,
}

impl RunArgs {
    pub fn batch(&self) -> usize {
        self.batch as usize
    }
}

/// `name`, or its last `max - 3` characters after `...` when it is longer than `max`.
pub fn short_name(name: &str, max: usize) -> String {
    let n = name.chars().count();
    if n <= max {
        return name.to_string();
    }
    let tail: String = name.chars().skip(n - max.saturating_sub(3)).collect();
    format!("...{tail}")
}

/// A spinner on stderr for work of unknown length; hidden like [`progress`].
pub fn spinner(what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
    );
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// A progress bar on stderr; hidden with --quiet and when stderr is not a terminal.
pub fn progress(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

//! The evaluation loop, independent of any inference engine: images in batches through a
//! caller's `infer` function, top-1/top-5 and each image's top-5 kept.

use crate::batch::load_batch;
use crate::dataset::Dataset;
use crate::metrics::{pred_to_label, top_k, Accuracy};
use crate::preprocess::Preprocess;
use std::time::Instant;

/// What an evaluation measured.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub accuracy: Accuracy,
    /// The top-5 predicted class indices (model outputs, before `label_offset`) per image.
    pub top5: Vec<Vec<usize>>,
    /// Wall time of inference alone (seconds), and of the whole loop including image loading.
    pub infer_seconds: f64,
    pub total_seconds: f64,
}

impl Evaluation {
    pub fn images(&self) -> usize {
        self.top5.len()
    }
}

/// Evaluates the images `indices` of `dataset`, `batch` at a time. `infer(input, n)` gets an
/// `n x C x H x W` batch and returns `n x classes` scores. `progress(done)` is called after
/// each batch with the number of images done.
pub fn evaluate<E: From<crate::Error>>(
    dataset: &Dataset,
    indices: &[usize],
    pre: &Preprocess,
    batch: usize,
    label_offset: i64,
    mut infer: impl FnMut(&[f32], usize) -> Result<Vec<f32>, E>,
    mut progress: impl FnMut(usize),
) -> Result<Evaluation, E> {
    let batch = batch.max(1);
    let per = pre.image_len();
    let mut buf = vec![0f32; batch * per];
    let mut acc = Accuracy::new();
    let mut top5 = Vec::with_capacity(indices.len());
    let start = Instant::now();
    let mut infer_seconds = 0.0;
    for chunk in indices.chunks(batch) {
        let n = chunk.len();
        load_batch(dataset, chunk, pre, &mut buf[..n * per])?;
        let t = Instant::now();
        let scores = infer(&buf[..n * per], n)?;
        infer_seconds += t.elapsed().as_secs_f64();
        let classes = scores.len() / n;
        if classes == 0 || scores.len() != classes * n {
            return Err(crate::Error::Invalid(format!(
                "the model returned {} scores for {n} images",
                scores.len()
            ))
            .into());
        }
        for (row, &i) in scores.chunks(classes).zip(chunk) {
            let ranked = top_k(row, 5);
            let as_labels: Vec<usize> = ranked
                .iter()
                .map(|&p| pred_to_label(p, label_offset).unwrap_or(usize::MAX))
                .collect();
            acc.add_ranked(&as_labels, dataset.label(i));
            top5.push(ranked);
        }
        progress(top5.len());
    }
    Ok(Evaluation {
        accuracy: acc,
        top5,
        infer_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}

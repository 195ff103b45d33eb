//! Parallel batch loading.

use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::preprocess::Preprocess;

/// Decode and preprocess the images `indices` of `dataset` in parallel (rayon) into `out`, an N x C x H x W
/// buffer of `indices.len() * pre.image_len()` floats. On failure the error of the first failing image (in
/// `indices` order) is returned.
pub fn load_batch(
    dataset: &Dataset,
    indices: &[usize],
    pre: &Preprocess,
    out: &mut [f32],
) -> Result<()> {
    let per = pre.image_len();
    let expected = indices.len() * per;
    if out.len() != expected {
        return Err(Error::BufferSize {
            what: "batch",
            expected,
            got: out.len(),
        });
    }
    if let Some(&bad) = indices.iter().find(|&&i| i >= dataset.len()) {
        return Err(Error::Invalid(format!(
            "image index {bad} out of range (dataset {} has {} images)",
            dataset.dir.display(),
            dataset.len()
        )));
    }
    if per == 0 {
        return Ok(());
    }
    let results: Vec<Result<()>> = out
        .par_chunks_mut(per)
        .zip(indices.par_iter())
        .map(|(chunk, &i)| pre.load_into(dataset.path(i), chunk))
        .collect();
    results.into_iter().collect()
}

/// Like [`load_batch`] but allocating the batch.
pub fn load_batch_vec(dataset: &Dataset, indices: &[usize], pre: &Preprocess) -> Result<Vec<f32>> {
    let mut v = vec![0.0; indices.len() * pre.image_len()];
    load_batch(dataset, indices, pre, &mut v)?;
    Ok(v)
}

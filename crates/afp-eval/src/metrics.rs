//! Top-k predictions and accuracy / agreement counters.

use std::cmp::Ordering;

/// `a` ranks before `b`: higher score first, ties (and NaN, which ranks last) broken by lower index.
fn ranks_before(scores: &[f32], a: usize, b: usize) -> bool {
    let (sa, sb) = (scores[a], scores[b]);
    match (sa.is_nan(), sb.is_nan()) {
        (true, true) => a < b,
        (true, false) => false,
        (false, true) => true,
        (false, false) => match sa.partial_cmp(&sb) {
            Some(Ordering::Greater) => true,
            Some(Ordering::Less) => false,
            _ => a < b,
        },
    }
}

/// Indices of the `k` highest scores, best first. Ties go to the lower index; NaN ranks below every number.
/// Returns `min(k, scores.len())` indices.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(scores.len());
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for i in 0..scores.len() {
        if best.len() == k && !ranks_before(scores, i, best[k - 1]) {
            continue;
        }
        let pos = best
            .iter()
            .position(|&b| ranks_before(scores, i, b))
            .unwrap_or(best.len());
        best.insert(pos, i);
        best.truncate(k);
    }
    best
}

/// Index of the highest score (ties: lower index). `None` for an empty row.
pub fn argmax(scores: &[f32]) -> Option<usize> {
    top_k(scores, 1).first().copied()
}

/// Map a predicted class index to a label index: `pred - label_offset` (`None` if negative).
pub fn pred_to_label(pred: usize, label_offset: i64) -> Option<usize> {
    usize::try_from(pred as i64 - label_offset).ok()
}

/// Counts of top-1 / top-5 hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accuracy {
    pub total: usize,
    pub top1: usize,
    pub top5: usize,
}

impl Accuracy {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one image given its ranked predictions (best first, already label indices).
    pub fn add_ranked(&mut self, ranked: &[usize], label: usize) {
        self.total += 1;
        if ranked.first() == Some(&label) {
            self.top1 += 1;
        }
        if ranked.iter().take(5).any(|&p| p == label) {
            self.top5 += 1;
        }
    }

    /// Add one image from its row of scores; `label_offset` as in the model card.
    pub fn add_scores(&mut self, scores: &[f32], label: usize, label_offset: i64) {
        let ranked: Vec<usize> = top_k(scores, 5)
            .into_iter()
            .map(|p| pred_to_label(p, label_offset).unwrap_or(usize::MAX))
            .collect();
        self.add_ranked(&ranked, label);
    }

    /// Add a batch: `scores` is `labels.len()` rows of `num_classes` values.
    pub fn add_batch(
        &mut self,
        scores: &[f32],
        num_classes: usize,
        labels: &[usize],
        label_offset: i64,
    ) {
        assert_eq!(
            scores.len(),
            labels.len() * num_classes,
            "scores must hold one row of num_classes per label"
        );
        for (row, &label) in scores.chunks_exact(num_classes).zip(labels) {
            self.add_scores(row, label, label_offset);
        }
    }

    /// Merge counts (e.g. from parallel workers).
    pub fn merge(&mut self, other: &Accuracy) {
        self.total += other.total;
        self.top1 += other.top1;
        self.top5 += other.top5;
    }

    /// Top-1 rate (0 when empty).
    pub fn top1_rate(&self) -> f64 {
        rate(self.top1, self.total)
    }

    /// Top-5 rate (0 when empty).
    pub fn top5_rate(&self) -> f64 {
        rate(self.top5, self.total)
    }
}

fn rate(n: usize, d: usize) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

/// Agreement between two models' predictions (e.g. FP32 reference vs quantized) on the same images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Agreement {
    pub total: usize,
    /// Same top-1 class.
    pub top1_same: usize,
    /// Top-1 of `b` is among the top-5 of `a`.
    pub top1_in_top5: usize,
    /// Same top-5 set (order ignored).
    pub top5_same_set: usize,
}

impl Agreement {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one image from ranked predictions (best first) of `a` (reference) and `b`.
    pub fn add_ranked(&mut self, a: &[usize], b: &[usize]) {
        self.total += 1;
        if !a.is_empty() && a.first() == b.first() {
            self.top1_same += 1;
        }
        if let Some(b1) = b.first() {
            if a.iter().take(5).any(|x| x == b1) {
                self.top1_in_top5 += 1;
            }
        }
        let mut sa: Vec<usize> = a.iter().take(5).copied().collect();
        let mut sb: Vec<usize> = b.iter().take(5).copied().collect();
        sa.sort_unstable();
        sb.sort_unstable();
        if sa == sb {
            self.top5_same_set += 1;
        }
    }

    /// Add one image from two rows of scores.
    pub fn add_scores(&mut self, a: &[f32], b: &[f32]) {
        self.add_ranked(&top_k(a, 5), &top_k(b, 5));
    }

    /// Add a batch of rows of `num_classes` scores.
    pub fn add_batch(&mut self, a: &[f32], b: &[f32], num_classes: usize) {
        assert_eq!(a.len(), b.len(), "score batches differ in length");
        assert!(
            num_classes > 0 && a.len().is_multiple_of(num_classes),
            "bad num_classes"
        );
        for (ra, rb) in a.chunks_exact(num_classes).zip(b.chunks_exact(num_classes)) {
            self.add_scores(ra, rb);
        }
    }

    pub fn merge(&mut self, other: &Agreement) {
        self.total += other.total;
        self.top1_same += other.top1_same;
        self.top1_in_top5 += other.top1_in_top5;
        self.top5_same_set += other.top5_same_set;
    }

    /// Share of images with the same top-1 (0 when empty).
    pub fn top1_rate(&self) -> f64 {
        rate(self.top1_same, self.total)
    }
}

/// Top-1 agreement of two equally long prediction lists: (same, total).
pub fn top1_agreement(a: &[usize], b: &[usize]) -> (usize, usize) {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    (same, a.len().min(b.len()))
}

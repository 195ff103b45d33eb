//! Labelled image folders.
//!
//! A dataset folder holds `labels.txt` (`<relative path> <class index>` per line, whitespace-separated; the path
//! may contain spaces, the index is the last field) and optionally `classes.txt` (one class name per line) or
//! `synsets.txt` (`<wnid> <description>` per line). Without `labels.txt`, images in `<class>/<file>`
//! subfolders are used, classes and files sorted by name.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Path relative to the dataset folder.
    pub file: PathBuf,
    /// Class index.
    pub label: usize,
}

/// A list of labelled images in a folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub dir: PathBuf,
    pub samples: Vec<Sample>,
    /// Class names by index (from `classes.txt`, the descriptions of `synsets.txt`, or subfolder names).
    pub class_names: Option<Vec<String>>,
    /// WordNet ids by index (from `synsets.txt`).
    pub synsets: Option<Vec<String>>,
}

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "bmp"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn read_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim().to_string()))
        .filter(|(_, l)| !l.is_empty())
        .collect())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v = Vec::new();
    for e in rd {
        v.push(e.map_err(|e| Error::io(dir, e))?.path());
    }
    v.sort();
    Ok(v)
}

impl Dataset {
    /// Open a dataset folder (see the module docs).
    pub fn open(dir: impl AsRef<Path>) -> Result<Dataset> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::Dataset {
                path: dir,
                msg: "dataset folder does not exist or is not a folder".into(),
            });
        }
        let labels = dir.join("labels.txt");
        let mut ds = if labels.is_file() {
            let samples = parse_labels(&labels)?;
            let (class_names, synsets) = read_class_names(&dir)?;
            Dataset {
                dir,
                samples,
                class_names,
                synsets,
            }
        } else {
            Self::from_subfolders(dir)?
        };
        if ds.samples.is_empty() {
            return Err(Error::Dataset {
                path: ds.dir,
                msg: "dataset has no images".into(),
            });
        }
        if let Some(names) = &ds.class_names {
            if let Some(s) = ds.samples.iter().find(|s| s.label >= names.len()) {
                return Err(Error::Dataset {
                    path: std::mem::take(&mut ds.dir),
                    msg: format!(
                        "label {} of {} is out of range ({} classes)",
                        s.label,
                        s.file.display(),
                        names.len()
                    ),
                });
            }
        }
        Ok(ds)
    }

    /// Open image folder `dir` with a labels file kept elsewhere (same format as `labels.txt`;
    /// paths in it are relative to `dir`). Class names come from `dir` as in [`Dataset::open`].
    pub fn open_with_labels(dir: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Dataset> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::Dataset {
                path: dir,
                msg: "image folder does not exist or is not a folder".into(),
            });
        }
        let samples = parse_labels(labels.as_ref())?;
        if samples.is_empty() {
            return Err(Error::Dataset {
                path: labels.as_ref().to_path_buf(),
                msg: "labels file lists no images".into(),
            });
        }
        let (class_names, synsets) = read_class_names(&dir)?;
        Ok(Dataset {
            dir,
            samples,
            class_names,
            synsets,
        })
    }

    fn from_subfolders(dir: PathBuf) -> Result<Dataset> {
        let classes: Vec<PathBuf> = sorted_entries(&dir)?
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        if classes.is_empty() {
            return Err(Error::Dataset {
                path: dir,
                msg: "no labels.txt and no <class>/ subfolders".into(),
            });
        }
        let mut samples = Vec::new();
        let mut names = Vec::new();
        for (label, cdir) in classes.iter().enumerate() {
            let cname = cdir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for f in sorted_entries(cdir)? {
                if f.is_file() && is_image(&f) {
                    let name = f.file_name().expect("file has a name");
                    samples.push(Sample {
                        file: Path::new(&cname).join(name),
                        label,
                    });
                }
            }
            names.push(cname);
        }
        Ok(Dataset {
            dir,
            samples,
            class_names: Some(names),
            synsets: None,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Full path of image `i`.
    pub fn path(&self, i: usize) -> PathBuf {
        self.dir.join(&self.samples[i].file)
    }

    /// Label of image `i`.
    pub fn label(&self, i: usize) -> usize {
        self.samples[i].label
    }

    /// Labels of the given images.
    pub fn labels(&self, indices: &[usize]) -> Vec<usize> {
        indices.iter().map(|&i| self.samples[i].label).collect()
    }

    /// Name of class `c`, if known.
    pub fn class_name(&self, c: usize) -> Option<&str> {
        self.class_names
            .as_ref()
            .and_then(|n| n.get(c))
            .map(String::as_str)
    }

    /// Number of classes: from the class list if any, else `max label + 1`.
    pub fn num_classes(&self) -> usize {
        match &self.class_names {
            Some(n) => n.len(),
            None => self.samples.iter().map(|s| s.label + 1).max().unwrap_or(0),
        }
    }

    /// The first `n` images (all when `n` is `None` or at least `len`): `--limit N`.
    pub fn limit(&self, n: Option<usize>) -> Dataset {
        let mut d = self.clone();
        if let Some(n) = n {
            d.samples.truncate(n);
        }
        d
    }

    /// Indices of the first `n` images (all when `None`).
    pub fn first_indices(&self, n: Option<usize>) -> Vec<usize> {
        (0..n.map_or(self.len(), |n| n.min(self.len()))).collect()
    }

    /// A subset by indices (in the given order).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        let mut samples = Vec::with_capacity(indices.len());
        for &i in indices {
            samples.push(self.samples.get(i).cloned().ok_or_else(|| {
                Error::Invalid(format!("image index {i} out of range ({})", self.len()))
            })?);
        }
        Ok(Dataset {
            samples,
            ..self.clone()
        })
    }
}

fn parse_labels(path: &Path) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for (line, text) in read_lines(path)? {
        let (file, label) = text
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| Error::Parse {
                path: path.to_path_buf(),
                line,
                msg: format!("expected \"<file> <label>\", got {text:?}"),
            })?;
        let label: usize = label.parse().map_err(|_| Error::Parse {
            path: path.to_path_buf(),
            line,
            msg: format!("label {label:?} is not a non-negative integer"),
        })?;
        samples.push(Sample {
            file: PathBuf::from(file.trim_end()),
            label,
        });
    }
    Ok(samples)
}

type ClassLists = (Option<Vec<String>>, Option<Vec<String>>);

fn read_class_names(dir: &Path) -> Result<ClassLists> {
    let classes = dir.join("classes.txt");
    if classes.is_file() {
        let names = read_lines(&classes)?.into_iter().map(|(_, l)| l).collect();
        return Ok((Some(names), None));
    }
    let synsets = dir.join("synsets.txt");
    if synsets.is_file() {
        let mut ids = Vec::new();
        let mut names = Vec::new();
        for (_, l) in read_lines(&synsets)? {
            let (id, desc) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
            ids.push(id.to_string());
            names.push(desc.trim().to_string());
        }
        return Ok((Some(names), Some(ids)));
    }
    Ok((None, None))
}

/// `n` indices out of `len`, evenly strided: `floor((2i + 1) * len / (2n))` for `i` in `0..n` (all when
/// `n >= len`). Beware: on a list interleaved by class (CIFAR here) a stride that is a multiple of the class
/// count picks a single class; [`calibration_indices`] avoids that.
pub fn strided_indices(len: usize, n: usize) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    (0..n).map(|i| (2 * i + 1) * len / (2 * n)).collect()
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic calibration selection: `n` distinct indices out of `len`, spread over the whole list, in
/// ascending order. The list is cut into `n` equal strata and one index is drawn per stratum with a seeded
/// SplitMix64 generator, so the choice is spread like a strided one but does not lock onto a periodic pattern
/// (such as a class-interleaved list). Same `(len, n, seed)` gives the same indices on every platform.
pub fn calibration_indices(len: usize, n: usize, seed: u64) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    let mut state = seed;
    (0..n)
        .map(|i| {
            let lo = i * len / n;
            let hi = (i + 1) * len / n; // hi > lo since n < len
            lo + (splitmix64(&mut state) % (hi - lo) as u64) as usize
        })
        .collect()
}

/// One line of a reference `<model>_top5.txt`: `<file> <label> <top-5 class indices>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceTop5 {
    pub file: String,
    pub label: usize,
    pub top5: Vec<usize>,
}

/// Read a per-image top-5 reference file.
pub fn read_reference_top5(path: impl AsRef<Path>) -> Result<Vec<ReferenceTop5>> {
    let path = path.as_ref();
    let mut out = Vec::new();
    for (line, text) in read_lines(path)? {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let bad = |msg: String| Error::Parse {
            path: path.to_path_buf(),
            line,
            msg,
        };
        if fields.len() < 3 {
            return Err(bad(format!(
                "expected \"<file> <label> <top-k...>\", got {text:?}"
            )));
        }
        let nums: Result<Vec<usize>, _> = fields[1..].iter().map(|f| f.parse::<usize>()).collect();
        let nums = nums.map_err(|e| bad(format!("bad number: {e}")))?;
        out.push(ReferenceTop5 {
            file: fields[0].to_string(),
            label: nums[0],
            top5: nums[1..].to_vec(),
        });
    }
    Ok(out)
}

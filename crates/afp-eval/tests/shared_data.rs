//! Tests over the real data bundle. Set `AFPQ_SHARED_DATA` to the data root (e.g. /work/shared/data);
//! without it these tests print "skipped" and pass.

use std::path::PathBuf;

use afp_eval::{
    calibration_indices, list_cards, load_batch, read_npy, read_reference_top5, Card, Dataset,
    OutputKind,
};

fn data_root() -> Option<PathBuf> {
    let Some(root) = std::env::var_os("AFPQ_SHARED_DATA") else {
        println!("skipped: AFPQ_SHARED_DATA is not set");
        return None;
    };
    let root = PathBuf::from(root);
    assert!(
        root.join("models").is_dir(),
        "AFPQ_SHARED_DATA={} does not hold a models/ folder (is the data bundle there?)",
        root.display()
    );
    Some(root)
}

#[test]
fn all_cards_load() {
    let Some(root) = data_root() else { return };
    let cards = list_cards(&root).unwrap();
    let names: Vec<String> = cards
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "efficientnet_lite0",
            "mobilenet_v2_random",
            "resnet50",
            "resnet8_cifar10"
        ]
    );
    for path in &cards {
        let card = Card::load(path).unwrap();
        assert!(
            card.model_path().is_file(),
            "{}",
            card.model_path().display()
        );
        assert!(card.dataset_dir().unwrap().is_dir());
        assert!(card.reference_tensor("input").unwrap().is_file());
        assert!(card.reference_top5_path().unwrap().is_file());
        assert_eq!(card.input_shape[0].fixed(), None);
        assert_eq!(card.label_offset, 0);
        let pre = card.preprocess().unwrap();
        assert_eq!(
            card.input_hw(),
            Some((pre.crop as u64, pre.crop as u64)),
            "{}",
            card.name
        );
        assert!(card.reference.as_ref().unwrap().images >= 1300);
    }
    let r50 = Card::load_named(&root, "resnet50").unwrap();
    assert_eq!(r50.output, Some(OutputKind::Softmax));
    assert_eq!(r50.num_classes, Some(1000));
    assert_eq!(r50.macs, Some(3_857_973_248));
    assert_eq!(r50.preprocess().unwrap(), afp_eval::Preprocess::caffe());
    let eff = Card::load_named(&root, "efficientnet_lite0").unwrap();
    assert_eq!(eff.output, Some(OutputKind::Logits));
    let r8 = Card::load_named(&root, "resnet8_cifar10").unwrap();
    assert_eq!(r8.preprocess().unwrap(), afp_eval::Preprocess::raw(32));
    let mut r8 = r8;
    r8.set_dataset_dir("/elsewhere");
    assert_eq!(r8.dataset_dir(), Some(PathBuf::from("/elsewhere")));
}

#[test]
fn dataset_listing() {
    let Some(root) = data_root() else { return };
    let inet = Dataset::open(root.join("images/imagenet-val-1300")).unwrap();
    assert_eq!(inet.len(), 1300);
    assert_eq!(inet.num_classes(), 1000);
    assert_eq!(
        inet.samples[0].file,
        PathBuf::from("ILSVRC2012_val_00000347.JPEG")
    );
    assert_eq!(inet.label(0), 472);
    assert_eq!(inet.synsets.as_ref().unwrap()[0], "n01440764");
    assert_eq!(inet.class_name(0), Some("tench, Tinca tinca"));
    let distinct: std::collections::BTreeSet<usize> =
        inet.samples.iter().map(|s| s.label).collect();
    assert_eq!(distinct.len(), 725);

    let cifar = Dataset::open(root.join("images/cifar10-test-2000")).unwrap();
    assert_eq!(cifar.len(), 2000);
    assert_eq!(cifar.num_classes(), 10);
    assert_eq!(cifar.class_name(9), Some("truck"));
    assert_eq!(cifar.samples[1].file, PathBuf::from("automobile/0000.jpg"));
    assert!((0..2000).all(|i| cifar.path(i).is_file()));
    assert_eq!(cifar.limit(Some(16)).len(), 16);

    // Calibration picks spread over the list and over the classes of the interleaved CIFAR list.
    let cal = calibration_indices(cifar.len(), 100, 0);
    let mut per_class = [0usize; 10];
    for &i in &cal {
        per_class[cifar.label(i)] += 1;
    }
    assert!(per_class.iter().all(|&n| n >= 3), "{per_class:?}");

    // Reference top-5 files list the datasets in order.
    let top5 = read_reference_top5(root.join("reference/resnet8_cifar10_top5.txt")).unwrap();
    assert_eq!(top5.len(), 2000);
    assert_eq!(top5[1].file, "automobile/0000.jpg");
    assert_eq!(top5[1].label, cifar.label(1));
    assert_eq!(top5[1].top5.len(), 5);
}

#[test]
fn dataset_from_subfolders_matches_cifar_classes() {
    let Some(root) = data_root() else { return };
    // A folder without labels.txt is read as <class>/<file>: copy 20 CIFAR images into such a folder.
    let cifar = Dataset::open(root.join("images/cifar10-test-2000")).unwrap();
    let tmp = std::env::temp_dir().join(format!("afp-eval-sub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for i in 0..20 {
        let dst = tmp.join(&cifar.samples[i].file);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(cifar.path(i), dst).unwrap();
    }
    let sub = Dataset::open(&tmp).unwrap();
    assert_eq!(sub.len(), 20);
    assert_eq!(
        sub.class_names.as_ref().unwrap()[..],
        cifar.class_names.as_ref().unwrap()[..]
    );
    assert_eq!(sub.samples[0].file, PathBuf::from("airplane/0000.jpg"));
    assert_eq!(sub.samples[1].file, PathBuf::from("airplane/0001.jpg"));
    assert_eq!(sub.label(19), 9);
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Preprocessing (image-crate decoding + Pillow-exact resize) against the reference input tensors.
#[test]
fn preprocessing_matches_reference_inputs() {
    let Some(root) = data_root() else { return };
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("reference/manifest.json")).unwrap(),
    )
    .unwrap();
    let mut report = String::new();
    for path in list_cards(&root).unwrap() {
        let card = Card::load(&path).unwrap();
        let pre = card.preprocess().unwrap();
        let ds = Dataset::open(card.dataset_dir().unwrap()).unwrap();
        let reference = read_npy(card.reference_tensor("input").unwrap()).unwrap();
        let k = reference.shape[0];
        assert_eq!(&reference.shape[1..], &pre.chw()[..]);
        let m = &manifest[&card.name];
        let files: Vec<&str> = m["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(files.len(), k);
        for (i, f) in files.iter().enumerate() {
            assert_eq!(
                ds.samples[i].file,
                PathBuf::from(f),
                "{}: image {i}",
                card.name
            );
        }
        let indices: Vec<usize> = (0..k).collect();
        let mut batch = vec![f32::NAN; k * pre.image_len()];
        load_batch(&ds, &indices, &pre, &mut batch).unwrap();

        // Differences in float units and in grey levels (|diff| * std / scale).
        let plane = pre.image_len() / 3;
        let (mut max_abs, mut max_levels, mut differing, mut over1) = (0f32, 0f32, 0usize, 0usize);
        for (j, (a, b)) in batch.iter().zip(&reference.data).enumerate() {
            let d = (a - b).abs();
            if d > 0.0 {
                differing += 1;
                let c = (j / plane) % 3;
                let levels = d * pre.std[c] / pre.scale;
                max_levels = max_levels.max(levels);
                if levels > 1.5 {
                    over1 += 1;
                }
            }
            max_abs = max_abs.max(d);
        }
        let n = batch.len();
        let share = differing as f64 / n as f64;
        let line = format!(
            "{}: K={k}, max |diff| {max_abs:.6} ({max_levels:.2} grey levels), {differing} of {n} values differ ({:.3}%), {over1} by more than 1 level",
            card.name,
            share * 100.0
        );
        println!("{line}");
        report.push_str(&line);
        report.push('\n');
        if std::env::var_os("AFPQ_MEASURE_ONLY").is_some() {
            continue;
        }
        // Measured (jpeg-decoder 0.3 vs libjpeg-turbo 3.2): max 3 grey levels, 9.0-9.9 % of values differ,
        // 0.8-0.9 % (ImageNet) and 2.7 % (CIFAR) by more than one level.
        assert!(max_levels <= 3.01, "{line}");
        assert!(share <= 0.11, "{line}");
        assert!((over1 as f64) / (n as f64) <= 0.03, "{line}");
    }
    let _ = std::fs::write(
        std::env::temp_dir().join("afp-eval-preprocess-report.txt"),
        report,
    );
}

#[test]
fn calibration_is_deterministic() {
    let a = calibration_indices(1300, 64, 7);
    assert_eq!(a, calibration_indices(1300, 64, 7));
    assert_eq!(a.len(), 64);
    assert!(a.windows(2).all(|w| w[0] < w[1]));
}

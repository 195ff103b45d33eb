use afp_eval::npy::{encode_npy, parse_npy};
use afp_eval::{strided_indices, top_k, Accuracy, Agreement, Dataset, Error, Preprocess};

#[test]
fn top_k_ties_and_nan() {
    let s = [0.1, 0.5, 0.5, f32::NAN, 0.9, -1.0];
    assert_eq!(top_k(&s, 3), vec![4, 1, 2]);
    assert_eq!(top_k(&s, 10), vec![4, 1, 2, 0, 5, 3]);
    assert_eq!(top_k(&[], 5), Vec::<usize>::new());
    assert_eq!(top_k(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
}

#[test]
fn accuracy_and_agreement() {
    let mut acc = Accuracy::new();
    // 2 images x 6 classes
    let scores = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0];
    acc.add_batch(&scores, 6, &[5, 1], 0);
    assert_eq!((acc.total, acc.top1, acc.top5), (2, 1, 2));
    assert_eq!(acc.top1_rate(), 0.5);
    let mut off = Accuracy::new();
    off.add_scores(&scores[..6], 4, 1); // predicted 5 - offset 1 = label 4
    assert_eq!(off.top1, 1);
    let mut ag = Agreement::new();
    ag.add_batch(&scores, &scores, 6);
    ag.add_scores(&[1.0, 0.0], &[0.0, 1.0]);
    assert_eq!((ag.total, ag.top1_same, ag.top1_in_top5), (3, 2, 3));
}

#[test]
fn npy_roundtrip_and_rejects() {
    let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
    let bytes = encode_npy(&[2, 3, 4], &data).unwrap();
    assert_eq!(bytes.len() % 64, (24 * 4) % 64);
    let a = parse_npy(&bytes).unwrap();
    assert_eq!(a.shape, vec![2, 3, 4]);
    assert_eq!(a.data, data);
    let one = parse_npy(&encode_npy(&[5], &data[..5]).unwrap()).unwrap();
    assert_eq!(one.shape, vec![5]);
    let scalar = parse_npy(&encode_npy(&[], &data[..1]).unwrap()).unwrap();
    assert_eq!(scalar.numel(), 1);
    assert!(encode_npy(&[3], &data).is_err());
    let patch = |from: &[u8], to: &[u8]| {
        let mut b = bytes.clone();
        let i = b.windows(from.len()).position(|w| w == from).unwrap();
        b[i..i + to.len()].copy_from_slice(to);
        b
    };
    assert!(parse_npy(&patch(b"<f4", b"<f8"))
        .unwrap_err()
        .contains("<f8"));
    assert!(parse_npy(&patch(b"<f4", b">f4")).is_err());
    assert!(parse_npy(&patch(b"False", b"True "))
        .unwrap_err()
        .contains("Fortran"));
    assert!(parse_npy(&bytes[..bytes.len() - 4]).is_err());
    assert!(parse_npy(b"hello").is_err());
    // Written by NumPy (fixtures).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let n = afp_eval::read_npy(dir.join("preprocess_raw.npy")).unwrap();
    assert_eq!(n.shape, vec![3, 24, 24]);
    let tmp = std::env::temp_dir().join(format!("afp-eval-{}.npy", std::process::id()));
    afp_eval::write_npy(&tmp, &n.shape, &n.data).unwrap();
    assert_eq!(afp_eval::read_npy(&tmp).unwrap(), n);
    std::fs::remove_file(&tmp).unwrap();
}

#[test]
fn selections() {
    assert_eq!(strided_indices(10, 3), vec![1, 5, 8]);
    assert_eq!(strided_indices(3, 5), vec![0, 1, 2]);
    let c = afp_eval::calibration_indices(2000, 100, 1);
    assert_eq!(c.len(), 100);
    assert!(c.windows(2).all(|w| w[0] < w[1]) && *c.last().unwrap() < 2000);
}

#[test]
fn presets_and_sizes() {
    let p = Preprocess::preset("torchvision", None).unwrap();
    assert_eq!((p.crop, p.image_len()), (224, 3 * 224 * 224));
    assert_eq!(p.resized_size(227, 227), (256, 256));
    assert_eq!(p.resized_size(500, 375), (341, 256));
    assert_eq!(Preprocess::raw(32).resized_size(32, 32), (32, 32));
    assert!(Preprocess::preset("raw", None).is_err());
    assert!(Preprocess::preset("nope", None).is_err());
    assert_eq!(Preprocess::preset("tf", Some(192)).unwrap().crop, 192);
    let img = image::RgbImage::new(8, 8);
    let mut small = vec![0.0; 5];
    assert!(matches!(
        p.apply(&img, &mut small),
        Err(Error::BufferSize { .. })
    ));
}

#[test]
fn errors_name_the_file() {
    let missing = std::env::temp_dir().join("afp-eval-no-such-dir");
    let e = Dataset::open(&missing).unwrap_err().to_string();
    assert!(e.contains("afp-eval-no-such-dir"), "{e}");
    let e = Preprocess::raw(4)
        .load("/no/such/image.jpg")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no/such/image.jpg"), "{e}");
    let empty = std::env::temp_dir().join(format!("afp-eval-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let e = Dataset::open(&empty).unwrap_err().to_string();
    assert!(e.contains("afp-eval-empty"), "{e}");
    std::fs::write(empty.join("labels.txt"), "a.jpg 1\nbad-line\n").unwrap();
    let e = Dataset::open(&empty).unwrap_err().to_string();
    assert!(e.contains("labels.txt:2"), "{e}");
    std::fs::write(empty.join("labels.txt"), "").unwrap();
    assert!(Dataset::open(&empty)
        .unwrap_err()
        .to_string()
        .contains("no images"));
    std::fs::write(empty.join("x.jpg"), b"not a jpeg").unwrap();
    let e = Preprocess::raw(4)
        .load(empty.join("x.jpg"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.jpg") && e.contains("decode"), "{e}");
    let e = afp_eval::Card::load(empty.join("x.jpg"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.jpg"), "{e}");
    std::fs::remove_dir_all(&empty).unwrap();
}

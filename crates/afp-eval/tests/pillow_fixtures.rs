//! Pillow-exact resize and full preprocessing, checked against fixtures generated with Pillow
//! (`tests/fixtures/gen_fixtures.py`).

use std::path::{Path, PathBuf};

use afp_eval::{decode_rgb8, read_npy, resize_bilinear_pillow, Preprocess, PreprocessSpec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn resize_matches_pillow_bit_exactly() {
    let dir = fixtures().join("resize");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for case in cases {
        let input = decode_rgb8(dir.join(case["input"].as_str().unwrap())).unwrap();
        let expected = decode_rgb8(dir.join(case["expected"].as_str().unwrap())).unwrap();
        let (w, h) = (
            case["width"].as_u64().unwrap() as u32,
            case["height"].as_u64().unwrap() as u32,
        );
        let got = resize_bilinear_pillow(&input, w, h);
        assert_eq!(got.dimensions(), (w, h));
        let diffs = got
            .as_raw()
            .iter()
            .zip(expected.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            diffs, 0,
            "{} -> {w}x{h}: {diffs} values differ from Pillow",
            case["input"]
        );
    }
}

#[test]
fn preprocess_matches_pillow_numpy() {
    let dir = fixtures();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("preprocess_cases.json")).unwrap())
            .unwrap();
    let src = decode_rgb8(dir.join("preprocess_src.png")).unwrap();
    let cases = meta.as_object().unwrap();
    assert_eq!(cases.len(), 5);
    for (key, spec) in cases {
        let spec: PreprocessSpec = serde_json::from_value(spec.clone()).unwrap();
        let pre = Preprocess::from_spec(&spec).unwrap();
        let expected = read_npy(dir.join(format!("preprocess_{key}.npy"))).unwrap();
        assert_eq!(expected.shape, pre.chw().to_vec(), "{key}");
        let mut out = vec![f32::NAN; pre.image_len()];
        pre.apply(&src, &mut out).unwrap();
        for (i, (a, b)) in out.iter().zip(&expected.data).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{key}: value {i}: {a} vs {b}");
        }
    }
}

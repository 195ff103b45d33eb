//! Bit-exact agreement with an independent implementation: value tables and round-to-nearest
//! encodings produced by the `ml_dtypes` Python package (scripts/gen_ml_dtypes_fixtures.py),
//! committed as fixtures.

use afp_format::{Format, Grid};

/// (fixture name, E, M, offset of the standard format in AFP terms)
const STANDARD: [(&str, u32, u32, i32); 5] = [
    ("float4_e2m1fn", 2, 1, 0),
    ("float6_e2m3fn", 2, 3, 0),
    ("float6_e3m2fn", 3, 2, -2),
    ("float8_e4m3fn", 4, 3, -6),
    ("float8_e5m2", 5, 2, -14),
];

fn fixture(name: &str) -> Vec<(String, String)> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (a, b) = l.split_once(' ').expect("two columns");
            (a.to_string(), b.to_string())
        })
        .collect()
}

#[test]
fn every_code_decodes_as_ml_dtypes_does() {
    for (name, e, m, t) in STANDARD {
        let g = Grid::new(Format::signed(e, m).unwrap(), t).unwrap();
        let rows = fixture(&format!("ml_dtypes_{name}.txt"));
        assert_eq!(rows.len(), 1 << (1 + e + m), "{name}");
        let mut compared = 0;
        for (code, value) in rows {
            let code: u8 = code.parse().unwrap();
            let want: f64 = match value.as_str() {
                "nan" | "inf" | "-inf" => continue, // AFP has no such codes
                v => v.parse().unwrap(),
            };
            assert_eq!(g.decode(code) as f64, want, "{name} code {code}");
            compared += 1;
        }
        let expected = match name {
            "float8_e4m3fn" => 254,   // all but the two NaN codes
            "float8_e5m2" => 256 - 8, // finite codes: not the 2 infinities and 6 NaNs
            _ => 1 << (1 + e + m),
        };
        assert_eq!(compared, expected, "{name}");
    }
}

#[test]
fn encoding_rounds_as_ml_dtypes_does() {
    for (name, e, m, t) in STANDARD {
        let g = Grid::new(Format::signed(e, m).unwrap(), t).unwrap();
        let sign = 1u8 << (e + m);
        let rows = fixture(&format!("ml_dtypes_{name}_encode.txt"));
        assert!(rows.len() > 3000, "{name}");
        for (bits, code) in rows {
            let x = f32::from_bits(u32::from_str_radix(&bits, 16).unwrap());
            let want: u8 = code.parse().unwrap();
            let want = if want == sign { 0 } else { want }; // ml_dtypes keeps -0, AFP emits +0
            assert_eq!(g.encode(x).unwrap(), want, "{name}: {x:e}");
        }
    }
}

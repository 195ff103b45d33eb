use afp_format::pack::{pack, packed_len, unpack};
use proptest::prelude::*;

#[test]
fn round_trip_every_width_and_length() {
    for width in 2..=8u32 {
        for len in 0..=67usize {
            let codes: Vec<u8> = (0..len)
                .map(|i| ((i * 37 + 11) % (1 << width)) as u8)
                .collect();
            let p = pack(&codes, width).unwrap();
            assert_eq!(p.len(), packed_len(len, width));
            assert_eq!(p.len(), (len * width as usize).div_ceil(8));
            assert_eq!(
                unpack(&p, width, len).unwrap(),
                codes,
                "width {width} len {len}"
            );
        }
    }
}

proptest! {
    #[test]
    fn round_trip_random(width in 2u32..=8, raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let codes: Vec<u8> = raw.iter().map(|c| c & ((1u16 << width) - 1) as u8).collect();
        let p = pack(&codes, width).unwrap();
        prop_assert_eq!(unpack(&p, width, codes.len()).unwrap(), codes);
    }
}

use crate::Grid;

/// Code -> f32 table of a grid, for decoding in bulk. Indexed by any byte, so a lookup
/// never fails; bits above the format's width are ignored as in [`Grid::decode`].
#[derive(Debug, Clone)]
pub struct Lut {
    values: [f32; 256],
}

impl Lut {
    pub fn new(grid: &Grid) -> Lut {
        // Decode the format's codes once; the bits above its width repeat them (the search
        // builds a table per candidate grid, so a 4-bit table should cost 16 decodes).
        let n = grid.format().code_count();
        let mut values = [0f32; 256];
        for (c, v) in values.iter_mut().enumerate().take(n) {
            *v = grid.decode(c as u8);
        }
        let (first, rest) = values.split_at_mut(n);
        for copy in rest.chunks_exact_mut(n) {
            copy.copy_from_slice(first);
        }
        Lut { values }
    }

    #[inline]
    pub fn decode(&self, code: u8) -> f32 {
        self.values[code as usize]
    }

    /// The table for the codes of the format (`2^bits` entries used).
    pub fn values(&self) -> &[f32; 256] {
        &self.values
    }

    pub fn decode_slice(&self, codes: &[u8], out: &mut [f32]) {
        assert_eq!(
            codes.len(),
            out.len(),
            "decode_slice: input and output lengths differ"
        );
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = self.values[c as usize];
        }
    }
}

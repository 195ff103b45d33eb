//! Granularity of offsets for a weight tensor and quantized tensors.
//!
//! A weight tensor is seen as `[out_channels, reduction]`: its first dimension is the output
//! channel and the remaining dimensions, flattened, are the reduction axis (for a Conv weight
//! `O x I x kH x kW`, the reduction is `I*kH*kW`; a Gemm weight must be given as `N x K`).

use crate::offset::{self, OffsetRule};
use crate::{pack, Format, FormatError, Grid, Lut};
use std::fmt;
use std::str::FromStr;

/// Which values share one offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One offset for the whole tensor (the paper).
    PerTensor,
    /// One offset per output channel.
    PerChannel,
    /// One offset per block of `K` consecutive values along the reduction axis of each channel
    /// (the last block of a channel may be shorter).
    PerBlock(usize),
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Granularity::PerTensor => f.write_str("tensor"),
            Granularity::PerChannel => f.write_str("channel"),
            Granularity::PerBlock(k) => write!(f, "block{k}"),
        }
    }
}

impl FromStr for Granularity {
    type Err = FormatError;
    /// `tensor`, `channel`, or `blockK` / `block:K` (K >= 1).
    fn from_str(s: &str) -> Result<Self, FormatError> {
        let err = || FormatError::Parse {
            input: s.into(),
            reason: "granularity is `tensor`, `channel` or `blockK` (e.g. block32)".into(),
        };
        match s {
            "tensor" => Ok(Granularity::PerTensor),
            "channel" => Ok(Granularity::PerChannel),
            _ => {
                let k = s
                    .strip_prefix("block")
                    .map(|k| k.trim_start_matches(':'))
                    .ok_or_else(err)?;
                match k.parse::<usize>() {
                    Ok(k) if k >= 1 => Ok(Granularity::PerBlock(k)),
                    _ => Err(err()),
                }
            }
        }
    }
}

/// How a tensor of `len` values with `channels` output channels splits into offset groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLayout {
    pub granularity: Granularity,
    pub channels: usize,
    /// Values per channel (the reduction length).
    pub reduction: usize,
}

impl GroupLayout {
    pub fn new(
        granularity: Granularity,
        shape: &[usize],
        len: usize,
    ) -> Result<GroupLayout, FormatError> {
        let prod = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&p| p == len);
        if prod.is_none() {
            return Err(FormatError::ShapeMismatch {
                shape: shape.to_vec(),
                len,
            });
        }
        let channels = shape.first().copied().unwrap_or(1);
        let reduction = len.checked_div(channels).unwrap_or(0);
        if let Granularity::PerBlock(0) = granularity {
            return Err(FormatError::Granularity(
                "block size must be at least 1".into(),
            ));
        }
        Ok(GroupLayout {
            granularity,
            channels,
            reduction,
        })
    }

    fn blocks_per_channel(&self) -> usize {
        match self.granularity {
            Granularity::PerBlock(k) => self.reduction.div_ceil(k),
            _ => 1,
        }
    }

    /// Number of offsets.
    pub fn groups(&self) -> usize {
        match self.granularity {
            Granularity::PerTensor => 1,
            Granularity::PerChannel => self.channels,
            Granularity::PerBlock(_) => self.channels * self.blocks_per_channel(),
        }
    }

    /// The value ranges (into the flat tensor) of group `g`'s values: one contiguous range,
    /// since channels are the outer dimension and blocks are contiguous within a channel.
    pub fn group_range(&self, g: usize) -> std::ops::Range<usize> {
        match self.granularity {
            Granularity::PerTensor => 0..self.channels * self.reduction,
            Granularity::PerChannel => g * self.reduction..(g + 1) * self.reduction,
            Granularity::PerBlock(k) => {
                let per = self.blocks_per_channel();
                let (c, b) = (g / per, g % per);
                let start = c * self.reduction + b * k;
                let end = c * self.reduction + ((b + 1) * k).min(self.reduction);
                start..end
            }
        }
    }
}

/// A tensor in AFP: its codes, one offset per group, and how groups are laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTensor {
    pub format: Format,
    pub shape: Vec<usize>,
    pub layout: GroupLayout,
    pub offsets: Vec<i32>,
    /// One code per value, unpacked (see [`QuantizedTensor::packed`]).
    pub codes: Vec<u8>,
}

impl QuantizedTensor {
    /// Chooses each group's offset by `rule` and encodes the values.
    pub fn quantize(
        data: &[f32],
        shape: &[usize],
        format: Format,
        granularity: Granularity,
        rule: OffsetRule,
    ) -> Result<QuantizedTensor, FormatError> {
        let layout = GroupLayout::new(granularity, shape, data.len())?;
        offset::abs_max(data)?; // rejects non-finite values with their index
        let offsets = (0..layout.groups())
            .map(|g| offset::choose(format, &data[layout.group_range(g)], rule))
            .collect::<Result<Vec<_>, _>>()?;
        QuantizedTensor::with_offsets(data, shape, format, layout, offsets)
    }

    /// Encodes the values with the given offsets (one per group).
    pub fn with_offsets(
        data: &[f32],
        shape: &[usize],
        format: Format,
        layout: GroupLayout,
        offsets: Vec<i32>,
    ) -> Result<QuantizedTensor, FormatError> {
        if offsets.len() != layout.groups() {
            return Err(FormatError::Granularity(format!(
                "{} offsets given for {} groups",
                offsets.len(),
                layout.groups()
            )));
        }
        let mut codes = vec![0u8; data.len()];
        for (g, &t) in offsets.iter().enumerate() {
            let r = layout.group_range(g);
            let start = r.start;
            Grid::new(format, t)?
                .encode_slice(&data[r.clone()], &mut codes[r])
                .map_err(|e| match e {
                    FormatError::NonFinite { index, value } => FormatError::NonFinite {
                        index: index + start,
                        value,
                    },
                    e => e,
                })?;
        }
        Ok(QuantizedTensor {
            format,
            shape: shape.to_vec(),
            layout,
            offsets,
            codes,
        })
    }

    /// Decoded values.
    pub fn decode(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.codes.len()];
        self.decode_into(&mut out);
        out
    }

    pub fn decode_into(&self, out: &mut [f32]) {
        for (g, &t) in self.offsets.iter().enumerate() {
            // Offsets were validated when the tensor was built.
            let grid = Grid::new(self.format, t).expect("offset validated at construction");
            let r = self.layout.group_range(g);
            Lut::new(&grid).decode_slice(&self.codes[r.clone()], &mut out[r]);
        }
    }

    /// Codes packed at the format's width.
    pub fn packed(&self) -> Vec<u8> {
        pack::pack(&self.codes, self.format.bits()).expect("codes come from the format")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ranges_cover_the_tensor_once() {
        for g in [
            Granularity::PerTensor,
            Granularity::PerChannel,
            Granularity::PerBlock(4),
            Granularity::PerBlock(7),
            Granularity::PerBlock(100),
        ] {
            let l = GroupLayout::new(g, &[3, 2, 5], 30).unwrap();
            let mut seen = vec![0; 30];
            for i in 0..l.groups() {
                for j in l.group_range(i) {
                    seen[j] += 1;
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "{g}: {seen:?}");
        }
        assert_eq!(
            GroupLayout::new(Granularity::PerBlock(4), &[3, 10], 30)
                .unwrap()
                .groups(),
            9
        );
        assert!(GroupLayout::new(Granularity::PerTensor, &[3, 10], 29).is_err());
        assert!(GroupLayout::new(Granularity::PerBlock(0), &[3, 10], 30).is_err());
    }

    #[test]
    fn per_channel_offsets_follow_each_channel() {
        let f = Format::signed(2, 1).unwrap();
        let data = [0.5f32, -1.0, 6.0, 12.0, -24.0, 2.0];
        let q = QuantizedTensor::quantize(
            &data,
            &[2, 3],
            f,
            Granularity::PerChannel,
            OffsetRule::Cover,
        )
        .unwrap();
        assert_eq!(q.offsets, vec![0, 2]);
        assert_eq!(q.decode(), data.to_vec());
        let q =
            QuantizedTensor::quantize(&data, &[2, 3], f, Granularity::PerTensor, OffsetRule::Cover)
                .unwrap();
        assert_eq!(q.offsets, vec![2]);
        let mut bad = data;
        bad[4] = f32::NAN;
        assert!(matches!(
            QuantizedTensor::quantize(&bad, &[2, 3], f, Granularity::PerChannel, OffsetRule::Cover),
            Err(FormatError::NonFinite { index: 4, .. })
        ));
        assert_eq!(
            "block32".parse::<Granularity>().unwrap(),
            Granularity::PerBlock(32)
        );
        assert!("block0".parse::<Granularity>().is_err());
    }
}

//! ResNet-50 convolution shapes and the layers both integer-path benchmarks build from them:
//! 5-bit E2M2 weights as integers |n| <= 28 (the same values / 256 for FP32), 8-bit uE0M8
//! activations, ReLU, a small bias.
// Each benchmark uses part of this module.
#![allow(dead_code)]

use afp_kernels::{ActEncoder, Activation, Conv2d, QConv, WinogradWeights};

/// (name, c_in, c_out, hw, k, stride, pad)
pub const SHAPES: &[(&str, usize, usize, usize, usize, usize, usize)] = &[
    ("r50_stem_224x3_7x7s2_64", 3, 64, 224, 7, 2, 3),
    ("r50_56x64_3x3_64", 64, 64, 56, 3, 1, 1),
    ("r50_56x256_1x1_64", 256, 64, 56, 1, 1, 0),
    ("r50_56x64_1x1_256", 64, 256, 56, 1, 1, 0),
    ("r50_28x128_3x3_128", 128, 128, 28, 3, 1, 1),
    ("r50_14x256_3x3_256", 256, 256, 14, 3, 1, 1),
    ("r50_14x1024_1x1_256", 1024, 256, 14, 1, 1, 0),
    ("r50_7x512_3x3_512", 512, 512, 7, 3, 1, 1),
    ("r50_7x512_1x1_2048", 512, 2048, 7, 1, 1, 0),
];

/// The activation encoder: uE0M8 at unit 2^-6, n = round(x * 64) in 0..=255.
pub fn encoder() -> ActEncoder {
    ActEncoder::new(-6, 8, 255, false).unwrap()
}

/// One shape's FP32 convolution, its weights and bias, and its integer layer.
pub struct Layer {
    pub conv: Conv2d,
    pub weight: Vec<f32>,
    /// The weights transformed once for Winograd's F(2x2, 3x3) where the engine would
    /// (see [`Layer::run_fp32`]).
    pub winograd: Option<WinogradWeights>,
    pub bias: Vec<f32>,
    pub q: QConv,
    pub hw: usize,
}

impl Layer {
    pub fn new(
        &(_, c_in, c_out, hw, k, stride, pad): &(&str, usize, usize, usize, usize, usize, usize),
    ) -> Layer {
        let conv = Conv2d {
            c_in,
            c_out,
            kh: k,
            kw: k,
            stride: [stride; 2],
            dilation: [1, 1],
            pads: [pad; 4],
            group: 1,
        };
        let wn = c_out * c_in * k * k;
        let w_int: Vec<i32> = (0..wn).map(|i| (i * 7 % 57) as i32 - 28).collect();
        let weight: Vec<f32> = w_int.iter().map(|&v| v as f32 / 256.0).collect();
        let bias: Vec<f32> = (0..c_out).map(|i| i as f32 * 0.001).collect();
        let q = QConv::new(
            conv.clone(),
            &w_int,
            28,
            encoder(),
            vec![1.0 / 256.0 / 64.0; c_out],
            Some(bias.clone()),
            Activation::Relu,
        )
        .unwrap();
        Layer {
            winograd: conv.winograd_weights(hw, hw, &weight),
            conv,
            weight,
            bias,
            q,
            hw,
        }
    }

    /// The FP32 convolution of `n` images with bias and Relu, as the engine runs it: 3x3
    /// layers that Winograd's F(2x2, 3x3) takes with their weights transformed once, the
    /// others through `Conv2d::run`.
    pub fn run_fp32(&self, n: usize, input: &[f32], out: &mut [f32], scratch: &mut Vec<f32>) {
        let (hw, act) = (self.hw, Activation::Relu);
        match &self.winograd {
            Some(ww) => self.conv.run_add_winograd(
                n,
                hw,
                hw,
                input,
                ww,
                Some(&self.bias),
                None,
                act,
                out,
                scratch,
            ),
            None => self.conv.run(
                n,
                hw,
                hw,
                input,
                &self.weight,
                Some(&self.bias),
                act,
                out,
                scratch,
            ),
        }
    }

    /// An input of `n` images.
    pub fn input(&self, n: usize) -> Vec<f32> {
        (0..n * self.conv.c_in * self.hw * self.hw)
            .map(|i| (i % 13) as f32 * 0.25)
            .collect()
    }

    /// Output elements for `n` images.
    pub fn out_len(&self, n: usize) -> usize {
        let (oh, ow) = self.conv.out_hw(self.hw, self.hw);
        n * self.conv.c_out * oh * ow
    }

    /// Multiply-adds for `n` images.
    pub fn macs(&self, n: usize) -> usize {
        let c = &self.conv;
        self.out_len(n) * c.c_in * c.kh * c.kw
    }
}

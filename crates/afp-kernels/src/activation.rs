/// Element-wise activation fused into kernel epilogues (ONNX semantics).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, min), max)` (ONNX `Clip`; ReLU6 is `Clip { min: 0, max: 6 }`).
    Clip { min: f32, max: f32 },
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// `max(0, min(1, alpha * x + beta))` (ONNX defaults: alpha 0.2, beta 0.5).
    HardSigmoid { alpha: f32, beta: f32 },
    /// `x * max(0, min(1, x / 6 + 0.5))` (ONNX `HardSwish`).
    HardSwish,
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[inline(always)]
fn hard_sigmoid(x: f32, alpha: f32, beta: f32) -> f32 {
    (alpha * x + beta).clamp(0.0, 1.0)
}

impl Activation {
    /// `(lo, hi)` when the activation is a clamp (None, Relu, Clip), which kernels apply in
    /// registers in their epilogue; `None` for the others.
    pub fn clamp_bounds(self) -> Option<(f32, f32)> {
        match self {
            Activation::None => Some((f32::NEG_INFINITY, f32::INFINITY)),
            Activation::Relu => Some((0.0, f32::INFINITY)),
            Activation::Clip { min, max } => Some((min, max)),
            _ => None,
        }
    }

    /// Applies the activation to one value.
    #[inline]
    pub fn apply(&self, x: f32) -> f32 {
        match *self {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            // ONNX Clip: max(x, min) then min(., max), i.e. `max` wins if min > max.
            Activation::Clip { min, max } => x.max(min).min(max),
            Activation::Sigmoid => sigmoid(x),
            Activation::HardSigmoid { alpha, beta } => hard_sigmoid(x, alpha, beta),
            Activation::HardSwish => x * hard_sigmoid(x, 1.0 / 6.0, 0.5),
        }
    }

    /// Applies the activation in place to every element (one `match`, then a
    /// tight loop the compiler can vectorize).
    pub fn apply_slice(&self, xs: &mut [f32]) {
        match *self {
            Activation::None => {}
            Activation::Relu => xs.iter_mut().for_each(|x| *x = x.max(0.0)),
            Activation::Clip { min, max } => xs.iter_mut().for_each(|x| *x = x.max(min).min(max)),
            Activation::Sigmoid => xs.iter_mut().for_each(|x| *x = sigmoid(*x)),
            Activation::HardSigmoid { alpha, beta } => xs
                .iter_mut()
                .for_each(|x| *x = hard_sigmoid(*x, alpha, beta)),
            Activation::HardSwish => xs
                .iter_mut()
                .for_each(|x| *x *= hard_sigmoid(*x, 1.0 / 6.0, 0.5)),
        }
    }

    /// `xs[i] = act(xs[i] + bias)`, one pass.
    #[inline]
    pub(crate) fn apply_slice_bias(&self, xs: &mut [f32], bias: f32) {
        if bias == 0.0 {
            return self.apply_slice(xs);
        }
        match *self {
            Activation::None => xs.iter_mut().for_each(|x| *x += bias),
            Activation::Relu => xs.iter_mut().for_each(|x| *x = (*x + bias).max(0.0)),
            Activation::Clip { min, max } => xs
                .iter_mut()
                .for_each(|x| *x = (*x + bias).max(min).min(max)),
            _ => xs.iter_mut().for_each(|x| *x = self.apply(*x + bias)),
        }
    }
}

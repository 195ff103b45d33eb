//! Image decoding and preprocessing into CHW float32.

use std::fmt;
use std::path::Path;

use image::RgbImage;

use crate::card::PreprocessSpec;
use crate::error::{Error, Result};
use crate::resize::resize_bilinear_pillow;

/// Channel order of the network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelOrder {
    Rgb,
    Bgr,
}

impl fmt::Display for ChannelOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelOrder::Rgb => "RGB",
            ChannelOrder::Bgr => "BGR",
        })
    }
}

impl std::str::FromStr for ChannelOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "RGB" => Ok(ChannelOrder::Rgb),
            "BGR" => Ok(ChannelOrder::Bgr),
            _ => Err(format!("unknown channel_order {s:?} (expected RGB or BGR)")),
        }
    }
}

/// Preprocessing of one image: optional shorter-side resize (Pillow BILINEAR), centre crop, then per channel
/// `x[c] = (pixel[c] * scale - mean[c]) / std[c]` in float32, CHW. `mean` and `std` are in `channel_order` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub resize_shorter: Option<u32>,
    pub crop: u32,
    pub channel_order: ChannelOrder,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Names accepted by [`Preprocess::preset`].
pub const PRESET_NAMES: [&str; 4] = ["torchvision", "caffe", "tf", "raw"];

impl Preprocess {
    /// torchvision / ImageNet: resize 256, crop 224, RGB, scale 1/255, ImageNet mean/std.
    pub fn torchvision() -> Self {
        Preprocess {
            resize_shorter: Some(256),
            crop: 224,
            channel_order: ChannelOrder::Rgb,
            scale: (1.0f64 / 255.0) as f32,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// Caffe / Keras ResNet: resize 256, crop 224, BGR, no scaling, BGR mean subtracted.
    pub fn caffe() -> Self {
        Preprocess {
            resize_shorter: Some(256),
            crop: 224,
            channel_order: ChannelOrder::Bgr,
            scale: 1.0,
            mean: [103.939, 116.779, 123.68],
            std: [1.0; 3],
        }
    }

    /// TensorFlow "inception" style: resize 256, crop 224, RGB, (x - 127.5) / 127.5.
    pub fn tf() -> Self {
        Preprocess {
            resize_shorter: Some(256),
            crop: 224,
            channel_order: ChannelOrder::Rgb,
            scale: 1.0,
            mean: [127.5; 3],
            std: [127.5; 3],
        }
    }

    /// Raw 0..255 values, no resize, centre crop `crop`.
    pub fn raw(crop: u32) -> Self {
        Preprocess {
            resize_shorter: None,
            crop,
            channel_order: ChannelOrder::Rgb,
            scale: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    /// A named preset (see [`PRESET_NAMES`]); `crop` is used by `raw` and overrides the others' 224 when given.
    pub fn preset(name: &str, crop: Option<u32>) -> Result<Self> {
        let mut p = match name.to_ascii_lowercase().as_str() {
            "torchvision" | "pytorch" | "imagenet" => Self::torchvision(),
            "caffe" => Self::caffe(),
            "tf" | "tensorflow" | "inception" => Self::tf(),
            "raw" => Self::raw(
                crop.ok_or_else(|| Error::Invalid("preset \"raw\" needs a crop size".into()))?,
            ),
            _ => {
                return Err(Error::Invalid(format!(
                    "unknown preprocessing preset {name:?} (known: {})",
                    PRESET_NAMES.join(", ")
                )))
            }
        };
        if let Some(c) = crop {
            p.crop = c;
        }
        Ok(p)
    }

    /// From a card's `preprocess` object. Only `bilinear` interpolation is supported.
    pub fn from_spec(spec: &PreprocessSpec) -> Result<Self, String> {
        if !spec.interpolation.eq_ignore_ascii_case("bilinear") {
            return Err(format!(
                "unsupported interpolation {:?} (only bilinear)",
                spec.interpolation
            ));
        }
        if spec.crop == 0 {
            return Err("crop must be positive".into());
        }
        if spec.resize_shorter == Some(0) {
            return Err("resize_shorter must be positive".into());
        }
        if spec.std.contains(&0.0) {
            return Err("std must not be zero".into());
        }
        Ok(Preprocess {
            resize_shorter: spec.resize_shorter,
            crop: spec.crop,
            channel_order: spec.channel_order.parse()?,
            scale: spec.scale as f32,
            mean: spec.mean.map(|v| v as f32),
            std: spec.std.map(|v| v as f32),
        })
    }

    /// Number of floats of one preprocessed image (3 x crop x crop).
    pub fn image_len(&self) -> usize {
        3 * self.crop as usize * self.crop as usize
    }

    /// CHW shape of one preprocessed image.
    pub fn chw(&self) -> [usize; 3] {
        [3, self.crop as usize, self.crop as usize]
    }

    /// Size after the resize step for an input of `w` x `h`:
    /// `(max(crop, round(w*s)), max(crop, round(h*s)))` with `s = resize_shorter / min(w, h)`.
    pub fn resized_size(&self, w: u32, h: u32) -> (u32, u32) {
        match self.resize_shorter {
            None => (w, h),
            Some(r) => {
                let s = r as f64 / w.min(h) as f64;
                // Python's round() is round-half-even.
                let rw = (w as f64 * s).round_ties_even() as u32;
                let rh = (h as f64 * s).round_ties_even() as u32;
                (rw.max(self.crop), rh.max(self.crop))
            }
        }
    }

    /// Resize (if configured) and centre-crop an RGB8 image to `crop` x `crop`. Regions outside the image
    /// (only possible without resize) are filled with black, as Pillow's `crop` does.
    pub fn resize_crop(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = img.dimensions();
        let (rw, rh) = self.resized_size(w, h);
        let resized;
        let src = if (rw, rh) != (w, h) {
            resized = resize_bilinear_pillow(img, rw, rh);
            &resized
        } else {
            img
        };
        let crop = self.crop;
        if src.dimensions() == (crop, crop) {
            return src.clone();
        }
        let left = (rw as i64 - crop as i64).div_euclid(2);
        let top = (rh as i64 - crop as i64).div_euclid(2);
        RgbImage::from_fn(crop, crop, |x, y| {
            let sx = left + x as i64;
            let sy = top + y as i64;
            if sx >= 0 && sy >= 0 && sx < rw as i64 && sy < rh as i64 {
                *src.get_pixel(sx as u32, sy as u32)
            } else {
                image::Rgb([0, 0, 0])
            }
        })
    }

    /// Convert a `crop` x `crop` RGB8 image into CHW floats in `out` (length [`Self::image_len`]).
    pub fn to_chw(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        let n = self.image_len();
        if out.len() != n {
            return Err(Error::BufferSize {
                what: "preprocessed image",
                expected: n,
                got: out.len(),
            });
        }
        if img.dimensions() != (self.crop, self.crop) {
            return Err(Error::Invalid(format!(
                "image is {}x{}, expected {c}x{c}",
                img.width(),
                img.height(),
                c = self.crop
            )));
        }
        let plane = n / 3;
        let raw = img.as_raw();
        for c in 0..3 {
            let src_c = match self.channel_order {
                ChannelOrder::Rgb => c,
                ChannelOrder::Bgr => 2 - c,
            };
            let (scale, mean, std) = (self.scale, self.mean[c], self.std[c]);
            let dst = &mut out[c * plane..(c + 1) * plane];
            for (d, px) in dst.iter_mut().zip(raw.chunks_exact(3)) {
                *d = (px[src_c] as f32 * scale - mean) / std;
            }
        }
        Ok(())
    }

    /// Full preprocessing of a decoded image into `out`.
    pub fn apply(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        let cropped = self.resize_crop(img);
        self.to_chw(&cropped, out)
    }

    /// Decode the file and preprocess it into `out`.
    pub fn load_into(&self, path: impl AsRef<Path>, out: &mut [f32]) -> Result<()> {
        let img = decode_rgb8(path)?;
        self.apply(&img, out)
    }

    /// Decode the file and return its preprocessed CHW floats.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Vec<f32>> {
        let mut v = vec![0.0; self.image_len()];
        self.load_into(path, &mut v)?;
        Ok(v)
    }
}

/// Decode an image file (format guessed from its content) to 8-bit RGB.
pub fn decode_rgb8(path: impl AsRef<Path>) -> Result<RgbImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb8_bytes(&bytes).map_err(|cause| Error::Decode {
        path: path.to_path_buf(),
        cause,
    })
}

/// Decode image bytes (format guessed from the content) to 8-bit RGB.
///
/// JPEG files are decoded with `jpeg-decoder`, whose output is closer to libjpeg-turbo (what Pillow uses) than
/// the `image` crate's zune-jpeg (on the bundled ImageNet JPEGs about half as many differing pixel values, at
/// most 3 grey levels instead of 4); other formats, and JPEG colour models `jpeg-decoder` does not turn into RGB
/// (CMYK), go through the `image` crate.
pub fn decode_rgb8_bytes(bytes: &[u8]) -> Result<RgbImage, image::ImageError> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        if let Some(img) = decode_jpeg(bytes) {
            return Ok(img);
        }
    }
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(image::ImageError::IoError)?
        .decode()?;
    Ok(img.into_rgb8())
}

/// `None` when jpeg-decoder fails or gives a pixel format other than RGB24 / L8 (the caller falls back).
fn decode_jpeg(bytes: &[u8]) -> Option<RgbImage> {
    let mut d = jpeg_decoder::Decoder::new(bytes);
    let px = d.decode().ok()?;
    let info = d.info()?;
    let (w, h) = (info.width as u32, info.height as u32);
    match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => RgbImage::from_raw(w, h, px),
        jpeg_decoder::PixelFormat::L8 => {
            RgbImage::from_raw(w, h, px.iter().flat_map(|&v| [v, v, v]).collect())
        }
        _ => None,
    }
}

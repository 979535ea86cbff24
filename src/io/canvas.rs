//! An RGB canvas that embedded-graphics draws on, saved as a PNG: the loss curve and the
//! attention maps are drawn on it.

use super::write_atomic;
use crate::error::{Error, Result};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use std::path::Path;

/// White pixels, `width x height`, drawn on through [`DrawTarget`].
pub(crate) struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub(crate) fn new(width: u32, height: u32) -> Self {
        Self { width, height, pixels: vec![255; width as usize * height as usize * 3] }
    }

    /// Writes the canvas to `path` as an 8-bit RGB PNG, atomically.
    pub(crate) fn save_png(&self, path: &Path) -> Result<()> {
        let mut png_bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut png_bytes, self.width, self.height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer =
                encoder.write_header().map_err(|e| Error::BadFile { path: path.into(), reason: e.to_string() })?;
            writer
                .write_image_data(&self.pixels)
                .map_err(|e| Error::BadFile { path: path.into(), reason: e.to_string() })?;
        }
        write_atomic(path, &png_bytes)
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.width && (p.y as u32) < self.height {
                let i = 3 * (p.y as usize * self.width as usize + p.x as usize);
                self.pixels[i..i + 3].copy_from_slice(&[c.r(), c.g(), c.b()]);
            }
        }
        Ok(())
    }
}

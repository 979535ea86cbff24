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

    /// Writes the canvas to `path` as an 8-bit RGB PNG, atomically. A file there that is not a
    /// PNG, or a path inside a checkpoint, is refused: a plot never replaces a run's data.
    pub(crate) fn save_png(&self, path: &Path) -> Result<()> {
        if let Some(mut file) = std::fs::File::open(path).ok().filter(|_| path.is_file()) {
            let mut signature = [0u8; 8];
            let read = std::io::Read::read_exact(&mut file, &mut signature);
            if read.is_err() || &signature != b"\x89PNG\r\n\x1a\n" {
                return Err(Error::BadFile {
                    path: path.into(),
                    reason: "exists and is not a PNG: a plot does not replace it; choose another file".into(),
                });
            }
        } else if path.is_dir() {
            return Err(Error::BadFile { path: path.into(), reason: "a directory, where a plot goes".into() });
        }
        if let Some(checkpoint) = path.ancestors().skip(1).find(|a| super::run_dir::is_checkpoint_dir(a)) {
            return Err(Error::BadFile {
                path: path.into(),
                reason: format!(
                    "inside the checkpoint {}, whose files are committed: choose another file",
                    checkpoint.display()
                ),
            });
        }
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

//! Attention maps as a PNG: a grid of heatmaps with the tokens on their axes.

use super::canvas::Canvas;
use crate::error::{Error, Result};
use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_7X13_BOLD};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};
use std::path::Path;

/// One map to draw: weights in [0, 1], one row per query (labelled `rows`), one column per key
/// (labelled `cols`).
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Shown above the map (`cross-attention, layer 1, head 2`).
    pub title: String,
    /// One label per row: the query tokens.
    pub rows: Vec<String>,
    /// One label per column: the key tokens.
    pub cols: Vec<String>,
    /// `rows.len()` rows of `cols.len()` weights.
    pub weights: Vec<Vec<f32>>,
}

/// Character cell of the label font.
const CHAR: Size = Size::new(6, 10);
/// The largest map, in pixels along its longer side, and the cell size bounds.
const MAP_PIXELS: u32 = 300;
const CELL_MIN: u32 = 3;
const CELL_MAX: u32 = 28;
const GAP: u32 = 24;

/// Draws `maps` in rows of `columns` panels under `title` (white for weight 0, dark blue for 1)
/// and writes the PNG to `path` atomically. `caption` goes below the grid.
pub fn write_heatmaps_png(path: &Path, title: &str, caption: &str, maps: &[Heatmap], columns: usize) -> Result<()> {
    if maps.is_empty() || columns == 0 {
        return Err(Error::InvalidConfig("an attention plot needs at least one map and one column".into()));
    }
    for map in maps {
        if map.weights.len() != map.rows.len() || map.weights.iter().any(|row| row.len() != map.cols.len()) {
            return Err(Error::DimMismatch {
                what: "attention map: weights vs row and column labels",
                expected: map.rows.len() * map.cols.len(),
                found: map.weights.iter().map(Vec::len).sum(),
            });
        }
        if map.rows.is_empty() || map.cols.is_empty() {
            return Err(Error::InvalidConfig(format!("attention map `{}` is empty", map.title)));
        }
    }
    let longest = maps.iter().map(|m| m.rows.len().max(m.cols.len())).max().unwrap_or(1) as u32;
    let cell = (MAP_PIXELS / longest).clamp(CELL_MIN, CELL_MAX);
    let label_chars = |labels: &[String]| labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    let row_label_w = maps.iter().map(|m| label_chars(&m.rows)).max().unwrap_or(0) * CHAR.width + 6;
    let max_cols = maps.iter().map(|m| m.cols.len()).max().unwrap_or(0) as u32;
    let max_rows = maps.iter().map(|m| m.rows.len()).max().unwrap_or(0) as u32;
    let title_h = 16;
    let col_label_h = CHAR.height + 4;
    let panel = Size::new(row_label_w + max_cols * cell, title_h + col_label_h + max_rows * cell);
    let grid_cols = columns.min(maps.len()) as u32;
    let grid_rows = maps.len().div_ceil(columns) as u32;
    let (top, bottom, margin) = (34, 34, 16);
    // Wide enough for the grid, the title (7-pixel bold characters) and the scale with its caption.
    let text_width = |text: &str, char_width: u32| text.chars().count() as u32 * char_width;
    let scale_width = 40 + 124 + text_width(caption, CHAR.width);
    let width =
        (grid_cols * panel.width + (grid_cols - 1) * GAP).max(text_width(title, 7)).max(scale_width) + 2 * margin;
    let height = top + grid_rows * panel.height + (grid_rows - 1) * GAP + bottom;
    if u64::from(width) * u64::from(height) > 64 << 20 {
        return Err(Error::InvalidConfig(format!(
            "{} attention maps of up to {max_rows}x{max_cols} tokens make a {width}x{height} image: \
             choose fewer layers or heads",
            maps.len()
        )));
    }
    let mut canvas = Canvas::new(width, height);
    let label = MonoTextStyle::new(&FONT_6X10, Rgb888::new(40, 40, 40));
    let heading = MonoTextStyle::new(&FONT_7X13_BOLD, Rgb888::BLACK);
    let draw = |canvas: &mut Canvas| -> Result<(), std::convert::Infallible> {
        Text::with_alignment(title, Point::new(width as i32 / 2, 20), heading, Alignment::Center).draw(canvas)?;
        for (i, map) in maps.iter().enumerate() {
            let (gx, gy) = ((i % columns) as u32, (i / columns) as u32);
            let x0 = (margin + gx * (panel.width + GAP)) as i32;
            let y0 = (top + gy * (panel.height + GAP)) as i32;
            let origin = Point::new(x0 + row_label_w as i32, y0 + (title_h + col_label_h) as i32);
            Text::new(&map.title, Point::new(x0, y0 + 10), label).draw(canvas)?;
            // Labels wider than a cell are drawn every `stride` cells.
            let stride = |chars: u32| (chars * CHAR.width).div_ceil(cell).max(1) as usize;
            let col_stride = stride(label_chars(&map.cols) + 1);
            for (c, text) in map.cols.iter().enumerate().step_by(col_stride) {
                let x = origin.x + (c as u32 * cell + cell / 2) as i32;
                Text::with_alignment(text, Point::new(x, origin.y - 4), label, Alignment::Center).draw(canvas)?;
            }
            let row_stride = (CHAR.height.div_ceil(cell)).max(1) as usize;
            for (r, text) in map.rows.iter().enumerate().step_by(row_stride) {
                let y = origin.y + (r as u32 * cell + cell / 2) as i32 + 3;
                Text::with_alignment(text, Point::new(origin.x - 4, y), label, Alignment::Right).draw(canvas)?;
            }
            for (r, row) in map.weights.iter().enumerate() {
                for (c, &w) in row.iter().enumerate() {
                    let at = origin + Point::new((c as u32 * cell) as i32, (r as u32 * cell) as i32);
                    Rectangle::new(at, Size::new(cell, cell))
                        .into_styled(PrimitiveStyle::with_fill(shade(w)))
                        .draw(canvas)?;
                }
            }
            let frame = Size::new(map.cols.len() as u32 * cell, map.rows.len() as u32 * cell);
            Rectangle::new(origin, frame)
                .into_styled(PrimitiveStyle::with_stroke(Rgb888::new(150, 150, 150), 1))
                .draw(canvas)?;
        }
        // The scale: 0 to 1, left to right.
        let (bar_x, bar_y) = (margin as i32 + 40, (height - bottom + 12) as i32);
        Text::with_alignment("0", Point::new(bar_x - 6, bar_y + 8), label, Alignment::Right).draw(canvas)?;
        for k in 0..=100 {
            Rectangle::new(Point::new(bar_x + k, bar_y), Size::new(1, 10))
                .into_styled(PrimitiveStyle::with_fill(shade(k as f32 / 100.0)))
                .draw(canvas)?;
        }
        Text::new("1", Point::new(bar_x + 106, bar_y + 8), label).draw(canvas)?;
        Text::new(caption, Point::new(bar_x + 124, bar_y + 8), label).draw(canvas)?;
        Ok(())
    };
    let Ok(()) = draw(&mut canvas);
    canvas.save_png(path)
}

/// White for 0, dark blue for 1; red for a weight that is not a number.
fn shade(w: f32) -> Rgb888 {
    if !w.is_finite() {
        return Rgb888::new(220, 30, 30);
    }
    let t = w.clamp(0.0, 1.0);
    let mix = |from: f32, to: f32| (from + (to - from) * t).round() as u8;
    Rgb888::new(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rows: usize, cols: usize) -> Heatmap {
        Heatmap {
            title: "map".into(),
            rows: (0..rows).map(|r| r.to_string()).collect(),
            cols: (0..cols).map(|c| c.to_string()).collect(),
            weights: (0..rows).map(|r| (0..cols).map(|c| if r == c { 1.0 } else { 0.0 }).collect()).collect(),
        }
    }

    #[test]
    fn a_grid_of_maps_is_written_as_a_png() {
        let dir = std::env::temp_dir().join(format!("typeformer-heatmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("maps.png");
        write_heatmaps_png(&path, "title", "rows: queries", &[map(3, 4), map(5, 2), map(64, 64)], 2).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn weights_that_do_not_match_their_labels_are_refused() {
        let mut bad = map(3, 3);
        bad.weights[1].pop();
        let path = std::env::temp_dir().join("typeformer-never-written.png");
        let err = write_heatmaps_png(&path, "t", "", &[bad], 1).unwrap_err().to_string();
        assert!(err.contains("row and column labels"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn shades_run_from_white_to_dark_blue() {
        assert_eq!(shade(0.0), Rgb888::new(255, 255, 255));
        assert_eq!(shade(1.0), Rgb888::new(8, 48, 107));
        assert_eq!(shade(2.0), shade(1.0));
    }
}

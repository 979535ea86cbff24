//! The loss curve of a training run, as CSV and as a PNG plot.

use super::StepLog;
use crate::error::{Error, Result};
use crate::io::write_atomic;
#[cfg(feature = "plots")]
use crate::io::Canvas;
#[cfg(feature = "plots")]
use embedded_graphics::mono_font::ascii::FONT_6X10;
#[cfg(feature = "plots")]
use embedded_graphics::mono_font::MonoTextStyle;
#[cfg(feature = "plots")]
use embedded_graphics::pixelcolor::Rgb888;
#[cfg(feature = "plots")]
use embedded_graphics::prelude::*;
#[cfg(feature = "plots")]
use embedded_graphics::primitives::{Line, Polyline, PrimitiveStyle};
#[cfg(feature = "plots")]
use embedded_graphics::text::{Alignment, Text};
use std::path::Path;

const CSV_HEADER: &str = "step,loss,lr,grad_norm,tokens_per_sec,val_loss";

/// Writes `step,loss,lr,grad_norm,tokens_per_sec,val_loss` rows to `path` (`val_loss` empty
/// where it was not measured).
pub fn write_curve_csv(path: &Path, logs: &[StepLog]) -> Result<()> {
    let mut csv = format!("{CSV_HEADER}\n");
    for l in logs {
        let val = l.val_loss.map_or(String::new(), |v| format!("{v:.6}"));
        csv.push_str(&format!(
            "{},{:.6},{:.6e},{:.6},{:.1},{val}\n",
            l.step, l.loss, l.lr, l.grad_norm, l.tokens_per_sec
        ));
    }
    write_atomic(path, csv.as_bytes())
}

/// Reads what [`write_curve_csv`] wrote.
pub fn read_curve_csv(path: &Path) -> Result<Vec<StepLog>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let bad =
        |line: usize| Error::BadFile { path: path.into(), reason: format!("line {line} is not a row of {CSV_HEADER}") };
    let mut lines = text.lines();
    if lines.next() != Some(CSV_HEADER) {
        return Err(bad(1));
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            let f: Vec<&str> = line.split(',').collect();
            let num = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| bad(i + 2));
            Ok(StepLog {
                step: f.first().and_then(|v| v.parse().ok()).ok_or_else(|| bad(i + 2))?,
                loss: num(1)?,
                lr: num(2)?,
                grad_norm: num(3)?,
                tokens_per_sec: num(4)?,
                val_loss: f.get(5).filter(|v| !v.is_empty()).map(|v| v.parse().map_err(|_| bad(i + 2))).transpose()?,
            })
        })
        .collect()
}

/// Plots loss against step (a light line per step, a dark moving average) to a PNG at `path`.
#[cfg(feature = "plots")]
pub fn write_curve_png(path: &Path, logs: &[StepLog], title: &str) -> Result<()> {
    if logs.is_empty() {
        return Err(Error::InvalidConfig("no training steps to plot".into()));
    }
    let (width, height) = (800u32, 480u32);
    let mut canvas = Canvas::new(width, height);
    let (left, right, top, bottom) = (70i32, 20i32, 40i32, 50i32);
    let (plot_w, plot_h) = (width as i32 - left - right, height as i32 - top - bottom);
    let losses: Vec<f64> = logs.iter().map(|l| l.loss).collect();
    let max = losses.iter().cloned().fold(f64::MIN, f64::max);
    let min = losses.iter().cloned().fold(f64::MAX, f64::min).min(0.0);
    let span = (max - min).max(1e-9);
    let last_step = logs.last().map_or(1, |l| l.step).max(2);
    let to_point = |step: usize, loss: f64| {
        let x = left + ((step - 1) as f64 / (last_step - 1) as f64 * plot_w as f64) as i32;
        let y = top + ((max - loss) / span * plot_h as f64) as i32;
        Point::new(x, y)
    };
    let black = MonoTextStyle::new(&FONT_6X10, Rgb888::BLACK);
    let axis = PrimitiveStyle::with_stroke(Rgb888::new(60, 60, 60), 1);
    let grid = PrimitiveStyle::with_stroke(Rgb888::new(225, 225, 225), 1);
    let raw: Vec<Point> = logs.iter().map(|l| to_point(l.step, l.loss)).collect();
    let window = (logs.len() / 50).max(1);
    let smooth: Vec<Point> = (0..logs.len())
        .map(|i| {
            let from = i.saturating_sub(window - 1);
            let mean = losses[from..=i].iter().sum::<f64>() / (i + 1 - from) as f64;
            to_point(logs[i].step, mean)
        })
        .collect();
    let draw = |canvas: &mut Canvas| -> Result<(), std::convert::Infallible> {
        for k in 0..=4 {
            let loss = min + span * k as f64 / 4.0;
            let y = top + ((max - loss) / span * plot_h as f64) as i32;
            Line::new(Point::new(left, y), Point::new(left + plot_w, y)).into_styled(grid).draw(canvas)?;
            Text::with_alignment(&format!("{loss:.3}"), Point::new(left - 6, y + 3), black, Alignment::Right)
                .draw(canvas)?;
        }
        for k in 0..=4 {
            let step = 1 + (last_step - 1) * k / 4;
            let x = to_point(step, max).x;
            Text::with_alignment(&step.to_string(), Point::new(x, top + plot_h + 16), black, Alignment::Center)
                .draw(canvas)?;
        }
        Polyline::new(&raw).into_styled(PrimitiveStyle::with_stroke(Rgb888::new(170, 195, 235), 1)).draw(canvas)?;
        Polyline::new(&smooth).into_styled(PrimitiveStyle::with_stroke(Rgb888::new(20, 70, 170), 2)).draw(canvas)?;
        Line::new(Point::new(left, top), Point::new(left, top + plot_h)).into_styled(axis).draw(canvas)?;
        Line::new(Point::new(left, top + plot_h), Point::new(left + plot_w, top + plot_h))
            .into_styled(axis)
            .draw(canvas)?;
        Text::with_alignment(title, Point::new(width as i32 / 2, 22), black, Alignment::Center).draw(canvas)?;
        Text::with_alignment("step", Point::new(left + plot_w / 2, height as i32 - 12), black, Alignment::Center)
            .draw(canvas)?;
        Text::new("loss", Point::new(8, top - 12), black).draw(canvas)?;
        Ok(())
    };
    let Ok(()) = draw(&mut canvas);
    canvas.save_png(path)
}

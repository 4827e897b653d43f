//! `--plot PREFIX`: the run as two SVG files, throughput per second of the
//! measured window and latency percentile curves. plotters' SVG backend
//! writes text as `<text>` elements (the viewer picks the font), so nothing
//! here needs fonts, fontconfig or freetype.

use anyhow::Context;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use std::path::Path;

/// One line on a chart.
#[derive(Debug)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

const SIZE: (u32, u32) = (1200, 700);
// plotters writes font sizes in pt, the SVG's are px (× 1/1.24).
const TITLE_FONT: (&str, u32) = ("sans-serif", 30);
const CAPTION_FONT: (&str, u32) = ("sans-serif", 20);
const LABEL_FONT: (&str, u32) = ("sans-serif", 17);
const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

/// Throughput per second: every line on one log-scale y axis, since no-op
/// RPCs, receipts RPCs and events differ by orders of magnitude. A second
/// with nothing is drawn on the axis floor; the top decade is left to the
/// legend.
pub fn throughput(path: &Path, run: &str, lines: &[Line]) -> anyhow::Result<()> {
    let x_max = max_of(lines, |p| p.0).ceil().max(1.0);
    let (y_lo, y_hi) = decades(lines);
    let axes = Axes {
        title: "Throughput per second of the measured window",
        x: 0f64..x_max,
        y: (y_lo..y_hi * 10.0).log_scale(),
        y_floor: y_lo,
        x_desc: "seconds into the measured window (no-op: its own window, after the receipts run)",
        y_desc: "per second (log scale; 0 drawn at the bottom)",
        x_label: |x| format!("{x:.1}"),
        y_label: |v| format!("{v:.0}"),
        legend: SeriesLabelPosition::UpperLeft,
    };
    draw(path, run, axes, lines)
}

/// Latency percentile curves: x is `1/(1-p)` on a log scale (labelled as
/// the percentile p, up to `nines` nines), y is milliseconds on a log scale.
pub fn latency(path: &Path, run: &str, lines: &[Line], nines: u32) -> anyhow::Result<()> {
    let (y_lo, y_hi) = decades(lines);
    let axes = Axes {
        title: "Latency distribution: percentiles (ms)",
        x: (1f64..10f64.powi(nines as i32)).log_scale(),
        y: (y_lo..y_hi).log_scale(),
        y_floor: y_lo,
        x_desc: "percentile (scale: 1/(1-p), log)",
        y_desc: "latency, ms (log scale)",
        x_label: |x| percentile_label(*x),
        y_label: |v| ms_label(*v),
        legend: SeriesLabelPosition::LowerRight,
    };
    draw(path, run, axes, lines)
}

/// What a chart shows besides its lines: `x` and `y` are plotters ranges
/// (plain or `.log_scale()`); a y below `y_floor` is drawn on it.
struct Axes<X, Y> {
    title: &'static str,
    x: X,
    y: Y,
    y_floor: f64,
    x_desc: &'static str,
    y_desc: &'static str,
    x_label: fn(&f64) -> String,
    y_label: fn(&f64) -> String,
    legend: SeriesLabelPosition,
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// A white SVG page: the title, the run below it, the chart and its legend.
fn draw<X, Y>(path: &Path, run: &str, axes: Axes<X, Y>, lines: &[Line]) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let write = || -> DrawResult {
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let area = root.titled(axes.title, TITLE_FONT)?;
        let mut chart = ChartBuilder::on(&area)
            .caption(run, CAPTION_FONT)
            .margin(16)
            .margin_right(48)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(axes.x, axes.y)?;
        chart
            .configure_mesh()
            .label_style(LABEL_FONT)
            .axis_desc_style(LABEL_FONT)
            .x_desc(axes.x_desc)
            .y_desc(axes.y_desc)
            .x_label_formatter(&axes.x_label)
            .y_label_formatter(&axes.y_label)
            .draw()?;
        for (i, line) in lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points = line.points.iter().map(|&(x, y)| (x, y.max(axes.y_floor)));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(&line.label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(axes.legend)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(LABEL_FONT)
            .draw()?;
        root.present()
    };
    write().with_context(|| format!("writing {}", path.display()))
}

fn max_of(lines: &[Line], f: impl Fn(&(f64, f64)) -> f64) -> f64 {
    lines
        .iter()
        .flat_map(|l| l.points.iter())
        .map(f)
        .fold(0.0, f64::max)
}

/// A log axis range in whole decades around the lines' positive y values.
fn decades(lines: &[Line]) -> (f64, f64) {
    let ys = || lines.iter().flat_map(|l| l.points.iter()).map(|p| p.1);
    let lo = ys().filter(|y| *y > 0.0).fold(f64::INFINITY, f64::min);
    let hi = ys().fold(0.0, f64::max);
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

/// `1/(1-p)` as the percentile p: 1 → "0%", 10 → "90%", 1000 → "99.9%".
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x.max(1.0));
    let decimals = (x.log10() - 2.0 - 1e-9).ceil().max(0.0) as usize;
    format!("{p:.decimals$}%")
}

fn ms_label(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels_show_as_many_nines_as_the_scale_reaches() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(10_000.0), "99.99%");
    }

    #[test]
    fn log_ranges_cover_whole_decades_and_survive_empty_lines() {
        let line = |points| Line {
            label: String::new(),
            points,
        };
        assert_eq!(
            decades(&[line(vec![(0.0, 0.0), (1.0, 41.0), (2.0, 4496.0)])]),
            (10.0, 10_000.0)
        );
        assert_eq!(decades(&[line(vec![])]), (1.0, 10.0));
        assert_eq!(decades(&[line(vec![(0.0, 5.0)])]), (1.0, 10.0));
    }

    #[test]
    fn writes_svg_with_text_and_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.svg");
        let lines = [Line {
            label: "receipts RPC/s".into(),
            points: vec![(0.5, 4000.0), (1.5, 4500.0), (2.5, 0.0)],
        }];
        throughput(&path, "closed loop, test", &lines).expect("throughput");
        let svg = std::fs::read_to_string(&path).expect("svg");
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("<polyline"), "{svg}");
        assert!(svg.contains("<text"), "{svg}");
        assert!(svg.contains("receipts RPC/s"), "{svg}");
    }
}

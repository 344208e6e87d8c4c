//! Pictures for people: PNG charts drawn with plotters and an embedded font, so they
//! look the same on every machine.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

/// Registers the embedded DejaVu Sans as plotters' "sans-serif" (once per process).
fn fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// A chart that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {reason}")]
pub struct PlotError {
    /// The file.
    pub path: std::path::PathBuf,
    /// Why.
    pub reason: String,
}

type Drawn = Result<(), Box<dyn std::error::Error>>;

fn named(path: &Path, drawn: Drawn) -> Result<(), PlotError> {
    drawn.map_err(|e| PlotError {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Draws per-node label counts as a heatmap: nodes down, classes across.
pub fn label_heatmap(
    counts: &[[u64; 10]],
    classes: &[&str; 10],
    title: &str,
    path: &Path,
) -> Result<(), PlotError> {
    named(path, heatmap(counts, classes, title, path))
}

/// One line of a line chart: its label and its points.
#[derive(Debug, Clone)]
pub struct Series {
    /// The legend's label.
    pub label: String,
    /// (x, y) points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// Draws `series` as lines with markers, a legend and axis labels.
pub fn line_chart(
    series: &[Series],
    title: &str,
    (x_label, y_label): (&str, &str),
    path: &Path,
) -> Result<(), PlotError> {
    named(path, lines(series, title, (x_label, y_label), path))
}

/// Draws one bar per (label, value), with the value written above it.
pub fn bar_chart(
    bars: &[(String, f64)],
    title: &str,
    y_label: &str,
    path: &Path,
) -> Result<(), PlotError> {
    named(path, columns(bars, title, y_label, path))
}

/// Line colours, told apart in print too.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn lines(series: &[Series], title: &str, (x_label, y_label): (&str, &str), path: &Path) -> Drawn {
    fonts();
    let all = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = |lo: f64, hi: f64| {
        let span = (hi - lo).abs().max(1e-9);
        (lo - 0.05 * span, hi + 0.05 * span)
    };
    // Rounds, nodes, batch sizes: whole numbers get whole-number ticks, not 1.0, 1.2, ...
    let whole = all().all(|&(x, _)| x.fract() == 0.0);
    let x_ticks = ((x1 - x0) as usize + 1).clamp(2, 12);
    let (x0, x1) = pad(x0, x1);
    let (y0, y1) = pad(y0.min(0.0), y1);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let whole_ticks = |x: &f64| {
        if x.fract() == 0.0 {
            format!("{x:.0}")
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_label)
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16));
    if whole {
        mesh.x_labels(x_ticks).x_label_formatter(&whole_ticks);
    }
    mesh.draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn columns(bars: &[(String, f64)], title: &str, y_label: &str, path: &Path) -> Drawn {
    fonts();
    let top = bars
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(70)
        // A segmented range holds its end too: 0..n - 1 gives exactly n columns.
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_label)
        .x_labels(n)
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => bars.get(*i).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), *v),
            ],
            PALETTE[i % PALETTE.len()].filled(),
        );
        bar.set_margin(0, 0, 25, 25);
        bar
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
        let style = ("sans-serif", 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        let text = match v.abs() {
            a if a >= 100.0 => format!("{v:.0}"),
            a if a >= 10.0 => format!("{v:.1}"),
            _ => format!("{v:.3}"),
        };
        Text::new(text, (SegmentValue::CenterOf(i), *v), style)
    }))?;
    root.present()?;
    Ok(())
}

fn heatmap(counts: &[[u64; 10]], classes: &[&str; 10], title: &str, path: &Path) -> Drawn {
    fonts();
    let rows = counts.len().max(1);
    let height = (120 + rows * 22).min(4000) as u32;
    let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = counts
        .iter()
        .flat_map(|r| r.iter())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(60)
        .y_label_area_size(50)
        .build_cartesian_2d((0..10usize).into_segmented(), (0..rows).into_segmented())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(10)
        .y_labels(rows.min(40))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => classes.get(*i).map(|c| c.to_string()).unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(i) if *i < rows => format!("node {i}"),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 12))
        .y_label_style(("sans-serif", 12))
        .draw()?;
    chart.draw_series(counts.iter().enumerate().flat_map(|(node, row)| {
        row.iter().enumerate().map(move |(class, &v)| {
            let t = v as f64 / max;
            let shade = RGBColor(
                (255.0 * (1.0 - t)) as u8,
                (255.0 * (1.0 - 0.6 * t)) as u8,
                255,
            );
            Rectangle::new(
                [
                    (SegmentValue::Exact(class), SegmentValue::Exact(node)),
                    (
                        SegmentValue::Exact(class + 1),
                        SegmentValue::Exact(node + 1),
                    ),
                ],
                shade.filled(),
            )
        })
    }))?;
    chart.draw_series(counts.iter().enumerate().flat_map(|(node, row)| {
        row.iter().enumerate().map(move |(class, &v)| {
            let style = ("sans-serif", 12)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center));
            Text::new(
                v.to_string(),
                (SegmentValue::CenterOf(class), SegmentValue::CenterOf(node)),
                style,
            )
        })
    }))?;
    root.present()?;
    Ok(())
}

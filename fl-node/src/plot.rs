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

/// Draws per-node label counts as a heatmap: nodes down, classes across.
pub fn label_heatmap(
    counts: &[[u64; 10]],
    classes: &[&str; 10],
    title: &str,
    path: &Path,
) -> anyhow::Result<()> {
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

//! The page's plots, as SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::{
    report::{ProgramCosts, Results},
    stats::Summary,
    ways::Way,
};

const SIZE: (u32, u32) = (760, 380);

/// Bars of the median TCP connections per second of each way.
pub fn connections(path: &Path, results: &Results) -> anyhow::Result<()> {
    let bars: Vec<(&str, f64)> = Way::ALL
        .iter()
        .filter_map(|way| {
            let rounds = results.tcp.get(way)?;
            let rates: Vec<f64> = rounds.iter().map(|m| m.per_second).collect();
            Some((way.label(), Summary::of(&rates).median))
        })
        .collect();
    bar_chart(
        path,
        "TCP connections per second (higher is better)",
        "connections/s",
        &bars,
    )
}

/// Bars of each program's net ns per run, for a socket of a scope.
pub fn program_costs(path: &Path, costs: &ProgramCosts) -> anyhow::Result<()> {
    let bars: Vec<(&str, f64)> = costs
        .scoped
        .iter()
        .map(|(name, cost)| (name.strip_prefix("netbpf_").unwrap_or(name), cost.net()))
        .collect();
    bar_chart(
        path,
        "net ns per run, socket of a scope (lower is better)",
        "ns",
        &bars,
    )
}

fn bar_chart(path: &Path, caption: &str, unit: &str, bars: &[(&str, f64)]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let top = bars.iter().map(|(_, value)| *value).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..bars.len().max(1) - 1).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .y_desc(unit)
        .y_label_formatter(&|value| format!("{value:.0}"))
        .x_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(index) => bars
                .get(*index)
                .map(|(name, _)| (*name).to_owned())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(index, (_, value))| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(index), 0.0),
                (SegmentValue::Exact(index + 1), *value),
            ],
            Palette99::pick(index).filled(),
        );
        bar.set_margin(0, 0, 12, 12);
        bar
    }))?;
    root.present()?;
    Ok(())
}

/// Median connections per second of each way against the number of other
/// containers (log scale).
pub fn scaling(path: &Path, results: &Results) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let most = results
        .scaling
        .iter()
        .map(|point| point.others)
        .max()
        .unwrap_or(1);
    #[expect(clippy::cast_precision_loss, reason = "container counts are small")]
    let most = most as f64;
    let curve = |way: Way| -> Vec<(f64, f64)> {
        results
            .scaling
            .iter()
            .filter_map(|point| {
                let rounds = point.connections.get(&way)?;
                let rates: Vec<f64> = rounds.iter().map(|m| m.per_second).collect();
                #[expect(clippy::cast_precision_loss, reason = "container counts are small")]
                let others = point.others as f64;
                Some((others, Summary::of(&rates).median))
            })
            .collect()
    };
    let top = Way::ALL
        .iter()
        .flat_map(|&way| curve(way))
        .map(|(_, rate)| rate)
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "TCP connections per second by other containers loaded",
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..most * 1.5).log_scale(), 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("other containers")
        .y_desc("connections/s")
        .x_label_formatter(&|value| format!("{value:.0}"))
        .y_label_formatter(&|value| format!("{value:.0}"))
        .draw()?;
    for (index, way) in Way::ALL.into_iter().enumerate() {
        let color = Palette99::pick(index);
        chart
            .draw_series(LineSeries::new(curve(way), color.stroke_width(2)))?
            .label(way.label())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(
            curve(way)
                .into_iter()
                .map(|point| Circle::new(point, 4, Palette99::pick(index).filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

//! The page's plots, as SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::{
    agent_scale::{AgentRound, AgentSize, Workloads},
    report::{self, ProgramCosts, Results},
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
        .map(|(name, costs)| {
            (
                name.strip_prefix("netbpf_").unwrap_or(name),
                report::net(costs).median,
            )
        })
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
    let curves = Way::ALL
        .iter()
        .map(|&way| {
            let points = results
                .scaling
                .iter()
                .filter_map(|point| {
                    let rounds = point.connections.get(&way)?;
                    let rates: Vec<f64> = rounds.iter().map(|m| m.per_second).collect();
                    Some((count(point.others), Summary::of(&rates).median))
                })
                .collect();
            (way.label(), points)
        })
        .collect::<Vec<_>>();
    lines(
        path,
        "TCP connections per second by other containers loaded",
        ("other containers", "connections/s"),
        &curves,
    )
}

/// The agent's median times against the number of cgroups (log scale).
pub fn agent(path: &Path, sizes: &[AgentSize]) -> anyhow::Result<()> {
    let cgroups: Vec<&AgentSize> = sizes
        .iter()
        .filter(|size| size.workloads == Workloads::Cgroups)
        .collect();
    let curve = |field: fn(&AgentRound) -> Option<f64>| -> Vec<(f64, f64)> {
        cgroups
            .iter()
            .filter_map(|size| {
                let values = size
                    .rounds
                    .iter()
                    .map(field)
                    .collect::<Option<Vec<f64>>>()?;
                Some((count(size.count), Summary::of(&values).median))
            })
            .collect()
    };
    lines(
        path,
        "the agent's seconds by cgroups (lower is better)",
        ("cgroups (and scopes, for reload and check)", "seconds"),
        &[
            (
                "all applied after the last appears",
                curve(|round| Some(round.applied_s)),
            ),
            (
                "all gone after the last goes",
                curve(|round| Some(round.gone_s)),
            ),
            (
                "reload of N scopes",
                curve(|round| {
                    (!round.reload_s.is_empty()).then(|| Summary::of(&round.reload_s).median)
                }),
            ),
            ("netbpf check of N scopes", curve(|round| round.check_s)),
        ],
    )
}

#[expect(clippy::cast_precision_loss, reason = "container counts are small")]
fn count(value: usize) -> f64 {
    value as f64
}

/// Labelled curves of points against a log-scale x axis.
fn lines(
    path: &Path,
    caption: &str,
    (x_desc, y_desc): (&str, &str),
    curves: &[(&str, Vec<(f64, f64)>)],
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let points = || curves.iter().flat_map(|(_, points)| points);
    let most = points().map(|&(x, _)| x).fold(1.0, f64::max);
    let top = points()
        .map(|&(_, y)| y)
        .fold(0.0, f64::max)
        .max(f64::EPSILON)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..most * 1.5).log_scale(), 0.0..top)?;
    let decimals = if top < 10.0 { 2 } else { 0 };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|value| format!("{value:.0}"))
        .y_label_formatter(&|value| format!("{value:.decimals$}"))
        .draw()?;
    for (index, (label, points)) in curves.iter().enumerate() {
        let color = Palette99::pick(index);
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(
            points
                .iter()
                .map(|&point| Circle::new(point, 4, Palette99::pick(index).filled())),
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

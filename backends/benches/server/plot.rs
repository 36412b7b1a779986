//! The side-by-side figures of one run as an SVG bar chart: round trips (the socketpair
//! floor, the server, libvfio-user) and posted writes per second (the server, libvfio-user,
//! the server's REGION_WRITE_MULTI), per placement.

use std::path::Path;

use plotters::prelude::*;

/// One placement's bars, in the order of the chart's legend; `None` is a bar not measured.
pub struct Group {
    /// The placement, as the x axis names it.
    pub name: &'static str,
    /// Values, one per series.
    pub values: Vec<Option<f64>>,
}

/// One chart: a title, a y-axis description, the series' names, and a group per placement.
pub struct Chart {
    /// Above the chart.
    pub title: &'static str,
    /// Along the y axis.
    pub unit: &'static str,
    /// Legend entries, one per value of a group.
    pub series: &'static [&'static str],
    /// Placements.
    pub groups: Vec<Group>,
}

/// Colours of the series, in order.
const COLOURS: [RGBColor; 3] = [
    RGBColor(150, 150, 150),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
];

/// Draws `charts` side by side into the SVG file at `path`.
pub fn write(path: &Path, charts: &[Chart]) -> Result<(), String> {
    let width = 520 * charts.len() as u32;
    let root = SVGBackend::new(path, (width, 400)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    for (area, chart) in root.split_evenly((1, charts.len())).iter().zip(charts) {
        draw(area, chart).map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    chart: &Chart,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let top = chart
        .groups
        .iter()
        .flat_map(|g| g.values.iter().flatten())
        .fold(0f64, |a, &b| a.max(b))
        * 1.15;
    let groups = chart.groups.len() as f64;
    let mut ctx = ChartBuilder::on(area)
        .caption(chart.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups, 0f64..top.max(1.0))?;
    let names: Vec<&str> = chart.groups.iter().map(|g| g.name).collect();
    ctx.configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * names.len() + 1)
        .x_label_formatter(&|x| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                names
                    .get(i as usize)
                    .map_or(String::new(), |n| (*n).to_string())
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc(chart.unit)
        .draw()?;
    let series = chart.series.len() as f64;
    let bar = 0.8 / series;
    for (s, name) in chart.series.iter().enumerate() {
        let colour = COLOURS[s % COLOURS.len()];
        let bars = chart.groups.iter().enumerate().filter_map(|(g, group)| {
            let value = group.values.get(s).copied().flatten()?;
            let x = g as f64 + 0.1 + bar * s as f64;
            Some(Rectangle::new(
                [(x, 0.0), (x + bar * 0.9, value)],
                colour.filled(),
            ))
        });
        ctx.draw_series(bars)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
}

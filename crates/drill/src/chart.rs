//! The latency chart (SVG, by plotters): every request of both paths as a point at its start
//! time and its latency (log scale), unanswered ones as triangles at their age when the drill
//! ended, with the fault and the promotion marked.

use plotters::prelude::*;

use crate::analysis::{BackendSnapshot, Moments};
use crate::workload::Outcome;

/// Lowest latency drawn (seconds): faster requests sit on the axis.
const FLOOR_S: f64 = 0.0005;

/// One path's data to draw.
pub struct Series<'a> {
    pub label: &'static str,
    pub backends: &'a [BackendSnapshot],
}

/// Renders the chart as an SVG document.
pub fn svg(series: &[Series<'_>], at: Moments, title: &str) -> Result<String, String> {
    let mut out = String::new();
    draw(&mut out, series, at, title).map_err(|e| e.to_string())?;
    Ok(out)
}

fn draw(
    out: &mut String,
    series: &[Series<'_>],
    at: Moments,
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = at.end.as_secs_f64().max(1.0);
    let y_max = series
        .iter()
        .flat_map(|s| s.backends.iter())
        .flat_map(|b| b.done.iter().map(|r| (r.end - r.start).as_secs_f64()))
        .fold(x_max, f64::max)
        * 1.5;
    let root = SVGBackend::with_string(out, (1100, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, (FLOOR_S..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("seconds since the drill started")
        .y_desc("request latency (s, log)")
        .draw()?;
    let colors = [RGBColor(214, 39, 40), RGBColor(31, 119, 180)];
    for (s, color) in series.iter().zip(colors) {
        let answered = s.backends.iter().flat_map(|b| b.done.iter()).map(|r| {
            let y = (r.end - r.start).as_secs_f64().max(FLOOR_S);
            let style = match r.outcome {
                Outcome::Ok => color.mix(0.5).filled(),
                Outcome::Failed(_) => color.stroke_width(1),
            };
            Circle::new((r.start.as_secs_f64(), y), 2, style)
        });
        chart
            .draw_series(answered)?
            .label(format!("{} (hollow: error)", s.label))
            .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
        let open = s.backends.iter().filter_map(|b| b.in_flight).map(|r| {
            let age = at.end.saturating_sub(r.start).as_secs_f64().max(FLOOR_S);
            TriangleMarker::new((r.start.as_secs_f64(), age), 6, color.filled())
        });
        chart
            .draw_series(open)?
            .label(format!("{}: unanswered at the end", s.label))
            .legend(move |(x, y)| TriangleMarker::new((x, y), 5, color.filled()));
    }
    let mut marks = vec![(at.fault, "fault")];
    marks.extend(at.promoted.map(|p| (p, "promotion")));
    for (t, label) in marks {
        let x = t.as_secs_f64();
        chart.draw_series(LineSeries::new(
            [(x, FLOOR_S), (x, y_max)],
            BLACK.mix(0.6).stroke_width(1),
        ))?;
        chart.draw_series([Text::new(
            format!(" {label}"),
            (x, y_max / 1.4),
            ("sans-serif", 14),
        )])?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

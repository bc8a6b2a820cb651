//! PNG plots of a [`Report`], drawn only from what the report holds: the latency distribution
//! (cumulative, from the summaries' histograms) and, over time, the success rate and the
//! latency of each second with the churn events marked.

use std::path::{Path, PathBuf};

use anyhow::Context;
use plotters::prelude::*;

use crate::run::{Bucket, Report};

const SIZE: (u32, u32) = (1200, 800);

/// A named, coloured line.
type Curve<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);
const FONT: &str = "sans-serif";

/// The plotting font, built in (no system font is needed).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a well-formed TrueType font; a failure would only lose the labels.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws `<stem>-latency.png` and `<stem>-timeline.png` beside `report_path` and returns their
/// paths.
pub fn draw(report: &Report, report_path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font();
    let stem = report_path.with_extension("");
    let latency = PathBuf::from(format!("{}-latency.png", stem.display()));
    let timeline = PathBuf::from(format!("{}-timeline.png", stem.display()));
    latency_cdf(report, &latency).with_context(|| format!("cannot draw {}", latency.display()))?;
    over_time(report, &timeline).with_context(|| format!("cannot draw {}", timeline.display()))?;
    Ok(vec![latency, timeline])
}

/// The cumulative share of successful operations at or under each latency, log scale.
fn latency_cdf(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let curves: Vec<Curve<'_>> = [
        ("finds", BLUE, report.finds.as_ref().map(|s| &s.histogram)),
        ("calls", RED, report.calls.as_ref().map(|s| &s.histogram)),
    ]
    .into_iter()
    .filter_map(|(name, color, h)| h.map(|h| (name, color, cumulative(h))))
    .filter(|(_, _, points)| !points.is_empty())
    .collect();
    let (lo, hi) = curves
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|(x, _)| *x))
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let (lo, hi) = if lo <= hi { (lo / 2.0, hi * 2.0) } else { (0.1, 1000.0) };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: latency of successful operations ({} nodes)",
                report.scenario.name, report.nodes
            ),
            (FONT, 28),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((lo.max(0.01)..hi).log_scale(), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("share at or under")
        .label_style((FONT, 16))
        .draw()?;
    for (name, color, points) in curves {
        chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?.label(name).legend(
            move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)),
        );
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 18))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// (upper bound, share at or under it) for each non-empty step of a histogram.
fn cumulative(histogram: &[Bucket]) -> Vec<(f64, f64)> {
    let total: u64 = histogram.iter().map(|b| b.count).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut seen = 0;
    let mut points = Vec::new();
    let mut previous = 0.1;
    for b in histogram {
        seen += b.count;
        // The overflow bucket (over 100 s) is drawn one decade past the last bound.
        let x = if b.le_ms.is_finite() { b.le_ms } else { previous * 10.0 };
        previous = x;
        if b.count > 0 || (seen > 0 && seen < total) {
            points.push((x, seen as f64 / total as f64));
        }
        if seen == total {
            break;
        }
    }
    points
}

/// Top: success rate per second (finds answered, calls succeeded). Bottom: p50 and p99 latency
/// per second. Churn kills (red) and restarts (green) are vertical lines on both.
fn over_time(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("{}: {} nodes, {} s", report.scenario.name, report.nodes, report.series.len()),
        (FONT, 28),
    )?;
    let (top, bottom) = root.split_vertically(SIZE.1 / 2 - 20);
    let secs = report.series.len().max(1) as f64;

    // The summaries' denominator: operations lost with a killed node are left out.
    let rate = |ok: u64, issued: u64, lost: u64| {
        let counted = issued.saturating_sub(lost);
        (counted > 0).then(|| ok as f64 / counted as f64 * 100.0)
    };
    let finds: Vec<(f64, f64)> = report
        .series
        .iter()
        .filter_map(|s| {
            rate(s.finds_answered, s.finds_issued, s.finds_lost).map(|r| (s.t as f64 + 0.5, r))
        })
        .collect();
    let calls: Vec<(f64, f64)> = report
        .series
        .iter()
        .filter_map(|s| {
            rate(s.calls_succeeded, s.calls_issued, s.calls_lost).map(|r| (s.t as f64 + 0.5, r))
        })
        .collect();
    let mut chart = ChartBuilder::on(&top)
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..secs, 0.0..105.0)?;
    chart.configure_mesh().y_desc("success (%)").label_style((FONT, 16)).draw()?;
    for (name, color, points) in [("finds answered", BLUE, finds), ("calls succeeded", RED, calls)]
    {
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    mark_events(&mut chart, report, 105.0)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let series: Vec<Curve<'_>> = vec![
        ("find p50", BLUE, points(report, |s| s.find_p50_ms)),
        ("find p99", CYAN, points(report, |s| s.find_p99_ms)),
        ("call p50", RED, points(report, |s| s.call_p50_ms)),
        ("call p99", MAGENTA, points(report, |s| s.call_p99_ms)),
    ];
    let max = series.iter().flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y)).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..secs, 0.0..max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc("latency (ms)")
        .label_style((FONT, 16))
        .draw()?;
    for (name, color, points) in series {
        if points.is_empty() {
            continue;
        }
        chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?.label(name).legend(
            move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)),
        );
    }
    mark_events(&mut chart, report, max * 1.1)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn points(report: &Report, pick: impl Fn(&crate::run::Second) -> Option<f64>) -> Vec<(f64, f64)> {
    report.series.iter().filter_map(|s| pick(s).map(|y| (s.t as f64 + 0.5, y))).collect()
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn mark_events(chart: &mut Chart<'_, '_>, report: &Report, top: f64) -> anyhow::Result<()> {
    for e in &report.events {
        let color = match e.kind.as_str() {
            "kill" => RED.mix(0.5),
            "restart" => GREEN.mix(0.5),
            "partition" => MAGENTA.mix(0.7),
            "heal" => BLUE.mix(0.7),
            "converged" => CYAN.mix(0.7),
            _ => BLACK.mix(0.5),
        };
        chart
            .draw_series(std::iter::once(PathElement::new(vec![(e.t, 0.0), (e.t, top)], color)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_drawn_into_two_pngs() {
        use crate::{
            run::{Event, Latency, Second, Summary, histogram},
            scenario::Scenario,
        };
        let latencies: Vec<f64> = (1..=200).map(|i| f64::from(i) * 0.7).collect();
        let summary = Summary {
            asked: 200,
            issued: 200,
            succeeded: 200,
            failed: 0,
            failed_by_reason: Default::default(),
            lost_with_their_node: 0,
            success_rate: 1.0,
            latency_ms: Latency::default(),
            max_late_ms: 0,
            histogram: histogram(&latencies),
            answered_from: None,
            kad_requests_per_find: None,
        };
        let series = (0..10)
            .map(|t| Second {
                t,
                calls_issued: 20,
                calls_succeeded: 19 + t % 2,
                call_p50_ms: Some(3.0 + t as f64),
                call_p99_ms: Some(9.0 + t as f64),
                ..Second::default()
            })
            .collect();
        let report = Report {
            scenario: toml::from_str::<Scenario>(
                "name = \"t\"\nduration_secs = 10\n[calls]\nrate = 20\n",
            )
            .unwrap_or_else(|e| panic!("{e}")),
            nodes: 5,
            started_ms: 0,
            finds: None,
            calls: Some(summary),
            publish: None,
            partition: None,
            baseline: None,
            ratios: Default::default(),
            events: vec![
                Event { t: 4.0, kind: "kill".into(), node: Some(2), detail: None },
                Event { t: 5.0, kind: "partition".into(), node: None, detail: None },
            ],
            series,
            resources: Vec::new(),
            rss_mib: serde_json::json!({}),
        };
        let dir = std::env::temp_dir().join(format!("capmesh-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        // Drawn from the report as written (`capmesh-testnet plot` reads it back).
        let text = serde_json::to_string(&report).unwrap_or_else(|e| panic!("{e}"));
        let report: Report = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            report.calls.as_ref().map(|c| c.histogram.last().map(|b| b.le_ms)),
            Some(Some(f64::INFINITY))
        );
        let paths = draw(&report, &dir.join("r.json")).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(paths.len(), 2);
        for p in &paths {
            let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("{e}"));
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", p.display());
            assert!(bytes.len() > 10_000, "{} is {} bytes", p.display(), bytes.len());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cumulative_steps_reach_one() {
        let h = vec![
            Bucket { le_ms: 1.0, count: 0 },
            Bucket { le_ms: 2.0, count: 1 },
            Bucket { le_ms: 4.0, count: 3 },
            Bucket { le_ms: 8.0, count: 0 },
        ];
        assert_eq!(cumulative(&h), vec![(2.0, 0.25), (4.0, 1.0)]);
        assert!(cumulative(&[Bucket { le_ms: 1.0, count: 0 }]).is_empty());
        let over = [Bucket { le_ms: 2.0, count: 1 }, Bucket { le_ms: f64::INFINITY, count: 1 }];
        assert_eq!(cumulative(&over), vec![(2.0, 0.5), (20.0, 1.0)]);
    }
}

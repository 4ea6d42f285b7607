//! Charts of the medians (PNG and SVG): throughput vs tasks, latency
//! percentiles vs tasks, and wake-up latency vs waiters, pglock beside its
//! floor, one column per durability.

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::stats::Record;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const PGLOCK: RGBColor = RGBColor(31, 119, 180);
const PGLOCK_LIGHT: RGBColor = RGBColor(120, 180, 230);
const RAW: RGBColor = RGBColor(214, 39, 40);
const RAW_LIGHT: RGBColor = RGBColor(245, 140, 100);

/// (The 10k-held advisory case has several pglock variants, one of which
/// stops at the server's connection limit; it is read from the table.)
const THROUGHPUT_CASES: [&str; 5] = [
    "lease acquire+release",
    "lease renew",
    "pool claim+complete",
    "semaphore acquire+release",
    "advisory lock+unlock",
];

struct Series {
    name: String,
    color: RGBColor,
    pts: Vec<(f64, f64)>,
}

struct Panel {
    caption: String,
    xlabels: Vec<String>,
    ydesc: &'static str,
    log: bool,
    series: Vec<Series>,
}

/// Draws every chart the medians allow; returns the files written.
pub fn draw(medians: &[Record], dir: &Path, machine: &str) -> Vec<PathBuf> {
    let font: &'static [u8] = match std::fs::read(FONT) {
        Ok(b) => Box::leak(b.into_boxed_slice()),
        Err(e) => {
            eprintln!(
                "no charts: cannot read the font {FONT}: {e} (apt-get install fonts-dejavu-core)"
            );
            return Vec::new();
        }
    };
    if plotters::style::register_font("sans-serif", FontStyle::Normal, font).is_err() {
        eprintln!("no charts: cannot load the font {FONT}");
        return Vec::new();
    }
    let mut durs: Vec<String> = Vec::new();
    for r in medians {
        if !durs.contains(&r.durability) {
            durs.push(r.durability.clone());
        }
    }
    let mut out = Vec::new();
    let mut emit = |name: &str, title: String, cols: usize, panels: Vec<Panel>| {
        if panels.is_empty() {
            return;
        }
        let rows = panels.len().div_ceil(cols);
        let size = ((560 * cols as u32).max(900), 300 * rows as u32 + 40);
        let png = dir.join(format!("{name}.png"));
        let svg = dir.join(format!("{name}.svg"));
        let a = grid(
            BitMapBackend::new(&png, size).into_drawing_area(),
            &title,
            rows,
            cols,
            &panels,
        );
        let b = grid(
            SVGBackend::new(&svg, size).into_drawing_area(),
            &title,
            rows,
            cols,
            &panels,
        );
        match (a, b) {
            (Ok(()), Ok(())) => out.extend([png, svg]),
            (a, b) => eprintln!("chart {name} failed: {a:?} {b:?}"),
        }
    };
    let find = |d: &str, case: &str, imp: &str, tasks: usize| {
        medians
            .iter()
            .find(|r| r.durability == d && r.case == case && r.imp == imp && r.tasks == tasks)
    };
    let tasks = [1usize, 8, 32];
    let xl: Vec<String> = tasks.iter().map(|t| format!("{t} tasks")).collect();

    let mut thr = Vec::new();
    let mut lat = Vec::new();
    for case in THROUGHPUT_CASES {
        for d in &durs {
            let pts = |imp: &str, f: &dyn Fn(&Record) -> f64| -> Vec<(f64, f64)> {
                tasks
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| find(d, case, imp, *t).map(|r| (i as f64, f(r))))
                    .collect()
            };
            let s = |name: &str, color, pts: Vec<(f64, f64)>| Series {
                name: name.into(),
                color,
                pts,
            };
            if pts("pglock", &|r| r.ops_s).is_empty() {
                continue;
            }
            thr.push(Panel {
                caption: format!("{case} ({d})"),
                xlabels: xl.clone(),
                ydesc: "ops/s",
                log: false,
                series: vec![
                    s("pglock", PGLOCK, pts("pglock", &|r| r.ops_s)),
                    s("raw SQL", RAW, pts("raw", &|r| r.ops_s)),
                ],
            });
            lat.push(Panel {
                caption: format!("{case} ({d})"),
                xlabels: xl.clone(),
                ydesc: "ms (log)",
                log: true,
                series: vec![
                    s("pglock p50", PGLOCK, pts("pglock", &|r| r.p50_ms)),
                    s("pglock p99", PGLOCK_LIGHT, pts("pglock", &|r| r.p99_ms)),
                    s("raw p50", RAW, pts("raw", &|r| r.p50_ms)),
                    s("raw p99", RAW_LIGHT, pts("raw", &|r| r.p99_ms)),
                ],
            });
        }
    }
    let cols = durs.len().max(1);
    emit(
        "throughput",
        format!("pglock vs raw SQL: throughput (median) — {machine}"),
        cols,
        thr,
    );
    emit(
        "latency",
        format!("pglock vs raw SQL: latency of one operation — {machine}"),
        cols,
        lat,
    );

    let waiters = [1usize, 10, 100];
    let mut wake = Vec::new();
    for d in &durs {
        let pts = |imp: &str, f: &dyn Fn(&Record) -> f64| -> Vec<(f64, f64)> {
            waiters
                .iter()
                .enumerate()
                .filter_map(|(i, w)| {
                    find(d, "wake-up release->acquired", imp, *w).map(|r| (i as f64, f(r)))
                })
                .collect()
        };
        if pts("pglock", &|r| r.p50_ms).is_empty() {
            continue;
        }
        let s = |name: &str, color, pts| Series {
            name: name.into(),
            color,
            pts,
        };
        wake.push(Panel {
            caption: format!("release -> waiter has it ({d})"),
            xlabels: waiters.iter().map(|w| format!("{w} waiters")).collect(),
            ydesc: "ms (log)",
            log: true,
            series: vec![
                s("pglock p50", PGLOCK, pts("pglock", &|r| r.p50_ms)),
                s("pglock p99", PGLOCK_LIGHT, pts("pglock", &|r| r.p99_ms)),
                s("raw p50", RAW, pts("raw", &|r| r.p50_ms)),
                s("raw p99", RAW_LIGHT, pts("raw", &|r| r.p99_ms)),
            ],
        });
    }
    emit("wakeup", format!("wake-up latency — {machine}"), cols, wake);
    out
}

fn grid<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    rows: usize,
    cols: usize,
    panels: &[Panel],
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 18))?;
    for (area, p) in root.split_evenly((rows, cols)).iter().zip(panels) {
        panel(area, p)?;
    }
    root.present()?;
    Ok(())
}

fn panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let ys = p.series.iter().flat_map(|s| s.pts.iter().map(|(_, y)| *y));
    let ymax = ys.clone().fold(0.0f64, f64::max).max(1e-3);
    let ymin = ys.filter(|y| *y > 0.0).fold(f64::INFINITY, f64::min);
    let n = p.xlabels.len();
    let xr = -0.5f64..(n as f64 - 0.5);
    let labels = p.xlabels.clone();
    let fmt = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < labels.len() {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    let mut b = ChartBuilder::on(area);
    b.caption(&p.caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(62);
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_labels(2 * n + 1)
                .x_label_formatter(&fmt)
                .disable_x_mesh()
                .y_desc(p.ydesc)
                .draw()?;
            for s in &p.series {
                let c = s.color;
                chart
                    .draw_series(LineSeries::new(s.pts.clone(), c.stroke_width(2)))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
                chart.draw_series(s.pts.iter().map(|pt| Circle::new(*pt, 3, c.filled())))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .position(SeriesLabelPosition::UpperLeft)
                .label_font(("sans-serif", 12))
                .draw()?;
        }};
    }
    if p.log {
        let lo = if ymin.is_finite() { ymin / 2.0 } else { 1e-3 };
        finish!(b.build_cartesian_2d(xr, (lo..ymax * 2.0).log_scale())?);
    } else {
        finish!(b.build_cartesian_2d(xr, 0f64..ymax * 1.25)?);
    }
    Ok(())
}

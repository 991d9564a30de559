//! `herald-plot`: PNG plots of the benchmark results.
//!
//! ```text
//! herald-plot --criterion-dir target/criterion --ws-csv bench/results/ws.csv --out-dir bench/plots
//! ```
//!
//! * `fanout.png`: deliveries per second against subscribers, herald vs tokio broadcast,
//!   from criterion's `fanout/*/*/new/{estimates,benchmark}.json` (median time per
//!   iteration and the elements per iteration);
//! * `publish.png`: nanoseconds per publish against idle subscribers, from `publish/*/*`;
//! * `ws.png`: WebSocket deliveries per second against connections, herald vs the
//!   baseline, one line per rate, from the CSV `bench/run-ws.sh` writes;
//! * `scaling.png`: fan-out deliveries per second against the runtime's worker threads at
//!   one subscriber count (`--scaling-subs`), one line per implementation, from the CSV
//!   `bench/run-scaling.sh` writes.
//!
//! Text is drawn with a TrueType font read at run time (`--font`, DejaVu Sans by default):
//! plotters' `ab_glyph` backend is pure Rust, so no fontconfig or freetype is needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use plotters::prelude::*;
use plotters::style::FontStyle;

#[derive(Debug, Parser)]
#[command(
    name = "herald-plot",
    about = "PNG plots of herald's benchmark results"
)]
struct Args {
    /// criterion's output folder.
    #[arg(long, default_value = "target/criterion")]
    criterion_dir: PathBuf,
    /// The CSV written by bench/run-ws.sh (skipped if absent).
    #[arg(long, default_value = "bench/results/ws.csv")]
    ws_csv: PathBuf,
    /// The CSV written by bench/run-scaling.sh (skipped if absent).
    #[arg(long, default_value = "bench/results/scaling.csv")]
    scaling_csv: PathBuf,
    /// The subscriber count `scaling.png` shows.
    #[arg(long, default_value_t = 64)]
    scaling_subs: u64,
    /// Where the PNGs go.
    #[arg(long, default_value = "bench/plots")]
    out_dir: PathBuf,
    /// A TrueType font for the labels.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

/// One line of a plot: a name and (x label, y) points in x order.
type Series = (String, Vec<(u64, f64)>);

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Median nanoseconds per iteration and elements per iteration of one criterion benchmark.
fn criterion_point(dir: &Path) -> Result<(f64, Option<f64>), String> {
    let estimates = read_json(&dir.join("new/estimates.json"))?;
    let median = estimates["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| format!("{}: no median", dir.display()))?;
    let elements = read_json(&dir.join("new/benchmark.json"))
        .ok()
        .and_then(|b| b["throughput"]["Elements"].as_f64());
    Ok((median, elements))
}

/// Every `group/<function>/<param>` of a criterion group: function -> [(param, dir)].
fn criterion_group(root: &Path, group: &str) -> BTreeMap<String, Vec<(u64, PathBuf)>> {
    let mut out: BTreeMap<String, Vec<(u64, PathBuf)>> = BTreeMap::new();
    let Ok(functions) = std::fs::read_dir(root.join(group)) else {
        return out;
    };
    for function in functions.flatten() {
        let name = function.file_name().to_string_lossy().into_owned();
        let Ok(params) = std::fs::read_dir(function.path()) else {
            continue;
        };
        for param in params.flatten() {
            if let Ok(n) = param.file_name().to_string_lossy().parse::<u64>() {
                out.entry(name.clone()).or_default().push((n, param.path()));
            }
        }
    }
    for points in out.values_mut() {
        points.sort_by_key(|(n, _)| *n);
    }
    out
}

fn fanout_series(root: &Path) -> Result<Vec<Series>, String> {
    let mut series = Vec::new();
    for (function, points) in criterion_group(root, "fanout") {
        let mut line = Vec::new();
        for (subs, dir) in points {
            let (ns, elements) = criterion_point(&dir)?;
            let elements = elements.ok_or_else(|| format!("{}: no throughput", dir.display()))?;
            line.push((subs, elements / (ns * 1e-9)));
        }
        series.push((function, line));
    }
    Ok(series)
}

fn publish_series(root: &Path) -> Result<Vec<Series>, String> {
    let mut series = Vec::new();
    for (function, points) in criterion_group(root, "publish") {
        let mut line = Vec::new();
        for (subs, dir) in points {
            line.push((subs, criterion_point(&dir)?.0));
        }
        series.push((function, line));
    }
    Ok(series)
}

/// The cells of `columns` (named in the header line) of every data line of `csv`, with the
/// line's number for error messages.
fn csv_columns<const N: usize>(
    csv: &Path,
    columns: [&str; N],
) -> Result<Vec<(usize, [String; N])>, String> {
    let text =
        std::fs::read_to_string(csv).map_err(|e| format!("cannot read {}: {e}", csv.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| format!("{}: empty", csv.display()))?
        .split(',')
        .collect();
    let mut at = [0; N];
    for (slot, name) in at.iter_mut().zip(columns) {
        *slot = header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("{}: no column {name}", csv.display()))?;
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            let cells: Vec<&str> = line.split(',').collect();
            let mut row: [String; N] = std::array::from_fn(|_| String::new());
            for (cell, &c) in row.iter_mut().zip(&at) {
                *cell = cells
                    .get(c)
                    .ok_or_else(|| malformed(csv, i + 2))?
                    .to_string();
            }
            Ok((i + 2, row))
        })
        .collect()
}

fn malformed(csv: &Path, line: usize) -> String {
    format!("{} line {line}: malformed", csv.display())
}

/// Parses one cell of line `line` of `csv`.
fn cell<T: std::str::FromStr>(csv: &Path, line: usize, text: &str) -> Result<T, String> {
    text.parse().map_err(|_| malformed(csv, line))
}

/// Points grouped by series name, each series sorted by x.
fn into_series(by_key: BTreeMap<String, Vec<(u64, f64)>>) -> Vec<Series> {
    by_key
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by_key(|(x, _)| *x);
            (k, v)
        })
        .collect()
}

/// `server,rate,conns,...,events_per_s,...` -> one series per (server, rate).
fn ws_series(csv: &Path) -> Result<Vec<Series>, String> {
    let mut by_key: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for (line, [server, rate, conns, eps]) in
        csv_columns(csv, ["server", "rate", "conns", "events_per_s"])?
    {
        let point = (cell(csv, line, &conns)?, cell(csv, line, &eps)?);
        by_key
            .entry(format!("{server} rate={rate}"))
            .or_default()
            .push(point);
    }
    Ok(into_series(by_key))
}

/// `workers,impl,subs,melem_per_s` -> one series per implementation, x = workers, for the
/// rows with `subs` subscribers; y in deliveries per second.
fn scaling_series(csv: &Path, subs: u64) -> Result<Vec<Series>, String> {
    let mut by_impl: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for (line, [workers, imp, row_subs, melem]) in
        csv_columns(csv, ["workers", "impl", "subs", "melem_per_s"])?
    {
        if cell::<u64>(csv, line, &row_subs)? != subs {
            continue;
        }
        let point = (
            cell(csv, line, &workers)?,
            cell::<f64>(csv, line, &melem)? * 1e6,
        );
        by_impl
            .entry(format!("{imp} subs={subs}"))
            .or_default()
            .push(point);
    }
    Ok(into_series(by_impl))
}

/// Draws `series` with categorical x (the distinct x values, evenly spaced).
fn line_plot(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut xs: Vec<u64> = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|(x, _)| *x))
        .collect();
    xs.sort_unstable();
    xs.dedup();
    if xs.is_empty() {
        return Err(format!("{}: nothing to plot", path.display()));
    }
    let y_max = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        * 1.15;
    let index = |x: u64| xs.iter().position(|v| *v == x).unwrap_or(0) as f64;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(90)
        .build_cartesian_2d(-0.3f64..(xs.len() as f64 - 0.7), 0.0..y_max.max(1.0))
        .map_err(|e| err(&e))?;
    let labels = xs.clone();
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(xs.len())
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 0.01 && i >= 0.0 && (i as usize) < labels.len() {
                labels[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| human(*v))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = series_color(name, i);
        let pts: Vec<(f64, f64)> = points.iter().map(|(x, y)| (index(*x), *y)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// herald in warm colours, what it is compared with in blue/grey, the rest from a palette.
fn series_color(name: &str, i: usize) -> RGBAColor {
    let max = name.contains("rate=max");
    // Fixed rates: 1000/s (the issue's) in the full colour, any other in a lighter one.
    let other_rate = !max && name.contains("rate=") && !name.contains("rate=1000");
    if name.starts_with("herald_many") {
        RGBColor(230, 120, 0).to_rgba()
    } else if name.starts_with("herald_each") {
        RGBColor(150, 0, 150).to_rgba()
    } else if name.starts_with("herald_with") {
        RGBColor(240, 90, 180).to_rgba()
    } else if name.starts_with("herald") {
        if max {
            RGBColor(120, 0, 0)
        } else if other_rate {
            RGBColor(250, 150, 110)
        } else {
            RGBColor(220, 30, 30)
        }
        .to_rgba()
    } else if name.starts_with("tokio") || name.starts_with("baseline") {
        if max {
            RGBColor(40, 40, 40)
        } else if other_rate {
            RGBColor(120, 190, 250)
        } else {
            RGBColor(30, 90, 220)
        }
        .to_rgba()
    } else {
        Palette99::pick(i).to_rgba()
    }
}

/// 1234567 -> "1.23M".
fn human(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn run(args: &Args) -> Result<Vec<PathBuf>, String> {
    let font = std::fs::read(&args.font).map_err(|e| {
        format!(
            "cannot read the font {}: {e} (pass --font with any .ttf file)",
            args.font.display()
        )
    })?;
    // plotters keeps registered fonts for the life of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| format!("{} is not a usable TrueType font", args.font.display()))?;
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.out_dir.display()))?;
    let mut written = Vec::new();

    let fanout = fanout_series(&args.criterion_dir)?;
    if !fanout.is_empty() {
        let path = args.out_dir.join("fanout.png");
        line_plot(
            &path,
            "Fan-out: deliveries/s vs async subscribers (criterion medians)",
            "subscribers",
            "deliveries per second",
            &fanout,
        )?;
        written.push(path);
    }
    let publish = publish_series(&args.criterion_dir)?;
    if !publish.is_empty() {
        let path = args.out_dir.join("publish.png");
        line_plot(
            &path,
            "Publish: ns per publish vs idle subscribers (criterion medians)",
            "idle subscribers",
            "ns per publish",
            &publish,
        )?;
        written.push(path);
    }
    if args.ws_csv.exists() {
        let path = args.out_dir.join("ws.png");
        line_plot(
            &path,
            "WebSocket: deliveries/s vs connections (herald-loadgen)",
            "connections",
            "deliveries per second",
            &ws_series(&args.ws_csv)?,
        )?;
        written.push(path);
    }
    if args.scaling_csv.exists() {
        let series = scaling_series(&args.scaling_csv, args.scaling_subs)?;
        if series.is_empty() {
            return Err(format!(
                "{}: no rows with {} subscribers",
                args.scaling_csv.display(),
                args.scaling_subs
            ));
        }
        let path = args.out_dir.join("scaling.png");
        line_plot(
            &path,
            &format!(
                "Fan-out vs runtime workers, {} subscribers (criterion medians)",
                args.scaling_subs
            ),
            "runtime worker threads",
            "deliveries per second",
            &series,
        )?;
        written.push(path);
    }
    if written.is_empty() {
        return Err(format!(
            "no results found under {}, in {} or in {}",
            args.criterion_dir.display(),
            args.ws_csv.display(),
            args.scaling_csv.display()
        ));
    }
    Ok(written)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(paths) => {
            for p in paths {
                println!("herald-plot: wrote {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald-plot: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_series_filter_sort_and_name_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("herald-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("scaling.csv");
        std::fs::write(
            &csv,
            "workers,impl,subs,melem_per_s\n16,tokio,64,8.5\n2,tokio,64,9.7\n\
             2,herald,64,31.5\n2,herald,16,33.9\n16,herald,64,82.2\n",
        )
        .unwrap();
        let series = scaling_series(&csv, 64).unwrap();
        assert_eq!(
            series,
            vec![
                (
                    "herald subs=64".to_string(),
                    vec![(2, 31.5e6), (16, 82.2e6)]
                ),
                ("tokio subs=64".to_string(), vec![(2, 9.7e6), (16, 8.5e6)]),
            ]
        );
        assert!(scaling_series(&csv, 7).unwrap().is_empty());
        std::fs::write(&csv, "workers,impl,subs\n2,herald,64\n").unwrap();
        let err = scaling_series(&csv, 64).unwrap_err();
        assert!(err.contains("no column melem_per_s"), "{err}");
        std::fs::write(
            &csv,
            "workers,impl,subs,melem_per_s\n2,herald,64,1\n4,herald\n",
        )
        .unwrap();
        let err = scaling_series(&csv, 64).unwrap_err();
        assert!(err.ends_with("line 3: malformed"), "{err}");
        std::fs::write(
            &csv,
            "server,rate,conns,events_per_s\nherald,max,1000,5\nherald,max,100,7\n",
        )
        .unwrap();
        assert_eq!(
            ws_series(&csv).unwrap(),
            vec![("herald rate=max".to_string(), vec![(100, 7.0), (1000, 5.0)])]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

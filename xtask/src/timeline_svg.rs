//! `target/trace/timeline.svg`: one horizontal stacked bar per io mode, a segment per stage
//! sized by its mean time, in the manner of the "QEMU latency timeline" figure of the 2010
//! talk on the QEMU storage stack (a request's life from the guest through the VMM to the
//! host and back, left to right).

use std::fmt::Write as _;

use crate::trace_summary::{describe, ModeTrace, StageStat};

/// Stage colours: guest in greys, the VMM's threads in warm colours, the backend in blue.
const COLORS: [(&str, &str); 10] = [
    ("GuestKick", "#7f7f7f"),
    ("KickSeen", "#d62728"),
    ("Popped", "#ff7f0e"),
    ("Parsed", "#e3b23c"),
    ("HandedToWorker", "#9467bd"),
    ("BackendSubmit", "#8c564b"),
    ("BackendComplete", "#1f77b4"),
    ("UsedPublished", "#2ca02c"),
    ("IrqInjected", "#e377c2"),
    ("GuestComplete", "#bcbcbc"),
];

fn color(stage: &str) -> &'static str {
    COLORS
        .iter()
        .find(|(s, _)| *s == stage)
        .map_or("#17becf", |(_, c)| c)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round axis step giving about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// What a bar shows: the typical requests (up to the 90th percentile of the total) when the
/// trace has them, else all.
fn bar(m: &ModeTrace) -> (&[StageStat], Option<&StageStat>) {
    match &m.typical_total {
        Some(t) => (&m.typical, Some(t)),
        None => (&m.stages, m.total.as_ref()),
    }
}

/// The figure. A segment's width is its share of the mode's mean request time, so the
/// segments of a bar add up to that mean.
pub fn timeline_svg(title: &str, modes: &[ModeTrace]) -> String {
    let (w, left, right, top, bar_h, gap) = (1000.0, 120.0, 30.0, 50.0, 30.0, 18.0);
    let plot_w = w - left - right;
    let max_us = modes
        .iter()
        .filter_map(|m| bar(m).1)
        .map(|t| t.mean_us)
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let step = tick_step(max_us);
    let axis_max = (max_us / step).ceil() * step;
    let x = |us: f64| left + plot_w * us / axis_max;
    let bars_bottom = top + modes.len() as f64 * (bar_h + gap);
    let legend_rows = COLORS.len().div_ceil(2);
    let h = bars_bottom + 40.0 + legend_rows as f64 * 18.0 + 10.0;

    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n");
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"22\" font-size=\"14\">{}</text>",
        escape(title)
    );
    let _ = writeln!(s, "<text x=\"{left}\" y=\"38\" fill=\"#555\">mean us per stage over the requests up to the 90th percentile of latency (in brackets: mean of all)</text>");
    let mut tick = 0.0;
    while tick <= axis_max + step * 1e-6 {
        let tx = x(tick);
        let _ = writeln!(s, "<line x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{top}\" y2=\"{bars_bottom:.1}\" stroke=\"#ddd\"/><text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{tick}</text>", bars_bottom + 14.0);
        tick += step;
    }
    for (i, m) in modes.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"12\">{}</text>",
            left - 8.0,
            y + bar_h / 2.0 + 4.0,
            escape(&m.mode)
        );
        let (stages, Some(total)) = bar(m) else {
            continue;
        };
        let mut at = 0.0;
        for st in stages {
            let us = st.share * total.mean_us;
            let (x0, x1) = (x(at), x(at + us));
            let _ = writeln!(
                s,
                "<rect x=\"{x0:.2}\" y=\"{y:.1}\" width=\"{:.2}\" height=\"{bar_h}\" fill=\"{}\" stroke=\"#fff\" stroke-width=\"0.5\"><title>{}: {} ({us:.2} us mean, p50 {:.2}, p99 {:.2})</title></rect>",
                (x1 - x0).max(0.0),
                color(&st.stage),
                escape(&st.stage),
                escape(describe(&st.stage)),
                st.p50_us,
                st.p99_us
            );
            if x1 - x0 > 34.0 {
                let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#fff\">{us:.1}</text>", (x0 + x1) / 2.0, y + bar_h / 2.0 + 4.0);
            }
            at += us;
        }
        let all = m
            .total
            .as_ref()
            .filter(|_| m.typical_total.is_some())
            .map_or(String::new(), |a| format!(" ({:.1})", a.mean_us));
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\">{:.1} us{all}</text>",
            x(at) + 4.0,
            y + bar_h / 2.0 + 4.0,
            total.mean_us
        );
    }
    for (i, (stage, c)) in COLORS.iter().enumerate() {
        let lx = left + (i % 2) as f64 * 420.0;
        let ly = bars_bottom + 30.0 + (i / 2) as f64 * 18.0;
        let _ = writeln!(s, "<rect x=\"{lx}\" y=\"{ly:.1}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{}\" y=\"{:.1}\">{stage}: {}</text>", lx + 14.0, ly + 9.0, escape(describe(stage)));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, share: f64, mean: f64) -> StageStat {
        StageStat {
            stage: name.into(),
            count: 10,
            mean_us: mean,
            p50_us: mean,
            p99_us: mean,
            share,
        }
    }

    fn mode(name: &str, total: f64) -> ModeTrace {
        ModeTrace {
            mode: name.into(),
            stages: vec![
                stage("KickSeen", 0.25, total / 4.0),
                stage("BackendComplete", 0.5, total / 2.0),
                stage("GuestComplete", 0.25, total / 4.0),
            ],
            total: Some(stage("total", 1.0, total)),
            ..Default::default()
        }
    }

    /// Element nesting is balanced and attribute quotes pair up: the file is well-formed.
    fn assert_well_formed(svg: &str) {
        let mut stack = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').expect("unclosed tag") + open;
            let tag = &rest[open + 1..close];
            assert_eq!(
                tag.matches('"').count() % 2,
                0,
                "unbalanced quotes in <{tag}>"
            );
            assert!(!rest[..open].contains('>'), "stray '>' before <{tag}>");
            let name = tag
                .trim_start_matches('/')
                .split([' ', '/'])
                .next()
                .unwrap()
                .to_string();
            if tag.starts_with('/') {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.as_str()),
                    "mismatched </{name}>"
                );
            } else if !tag.ends_with('/') {
                stack.push(name);
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
    }

    #[test]
    fn one_bar_per_mode_scaled_to_the_slowest() {
        let svg = timeline_svg("t <&>", &[mode("vcpu", 100.0), mode("dataplane", 50.0)]);
        assert_well_formed(&svg);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // 3 segments per bar + 10 legend swatches.
        assert_eq!(svg.matches("<rect").count(), 2 * 3 + COLORS.len());
        assert!(svg.contains("t &lt;&amp;&gt;"));
        // The slowest bar spans the plot (axis rounded to 100): it ends at 1000 - 30.
        assert!(svg.contains("<text x=\"974.0\""), "{svg}");
        assert!(svg.contains("100.0 us") && svg.contains("50.0 us"));
    }

    #[test]
    fn bars_show_the_typical_requests_when_known() {
        let mut m = mode("workers", 400.0);
        let typical = mode("workers", 40.0);
        m.typical = typical.stages;
        m.typical_total = typical.total;
        let svg = timeline_svg("t", &[m]);
        assert_well_formed(&svg);
        assert!(svg.contains("40.0 us (400.0)"), "{svg}");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(100.0), 20.0);
        assert_eq!(tick_step(7.0), 2.0);
        assert_eq!(tick_step(1234.0), 500.0);
    }

    #[test]
    fn empty_input_is_still_an_image() {
        assert_well_formed(&timeline_svg("none", &[]));
    }
}

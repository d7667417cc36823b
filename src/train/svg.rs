//! The loss curves of a run as a small SVG (train and held-out loss against the step), written
//! by hand: two polylines, axes with a few ticks, a legend.

use super::run::{History, Point};

const W: f64 = 640.0;
const H: f64 = 360.0;
const PAD: f64 = 48.0;

/// An SVG of `h`'s train and held-out losses, titled `title`.
pub fn loss_curve(h: &History, title: &str) -> String {
    let all = h.train.iter().chain(&h.val);
    let max_step = all.clone().map(|p| p.step).max().unwrap_or(1).max(1) as f64;
    let finite = || all.clone().map(|p| p.loss as f64).filter(|l| l.is_finite());
    let (lo, hi) = (finite().fold(f64::INFINITY, f64::min), finite().fold(f64::NEG_INFINITY, f64::max));
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (0.0, lo.abs().max(1.0)) };
    let x = |s: usize| PAD + (W - 2.0 * PAD) * s as f64 / max_step;
    let y = |l: f32| H - PAD - (H - 2.0 * PAD) * (l as f64 - lo) / (hi - lo);
    let line = |pts: &[Point], color: &str| {
        let coords: Vec<String> = pts.iter().filter(|p| p.loss.is_finite()).map(|p| format!("{:.1},{:.1}", x(p.step), y(p.loss))).collect();
        format!("<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n", coords.join(" "))
    };
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n");
    s += &format!("<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n<text x=\"{PAD}\" y=\"24\" font-size=\"14\">{}</text>\n", escape(title));
    s += &format!("<path d=\"M{PAD},{PAD} V{} H{}\" fill=\"none\" stroke=\"black\"/>\n", H - PAD, W - PAD);
    for i in 0..=4 {
        let l = lo + (hi - lo) * i as f64 / 4.0;
        s += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{l:.2}</text>\n", PAD - 4.0, y(l as f32) + 4.0);
        let step = (max_step * i as f64 / 4.0).round() as usize;
        s += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{step}</text>\n", x(step), H - PAD + 16.0);
    }
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n", W / 2.0, H - 8.0);
    s += &line(&h.train, "#1f77b4");
    s += &line(&h.val, "#d62728");
    s += &format!("<text x=\"{}\" y=\"{PAD}\" fill=\"#1f77b4\">train loss</text>\n", W - PAD - 110.0);
    s += &format!("<text x=\"{}\" y=\"{}\" fill=\"#d62728\">held-out loss</text>\n", W - PAD - 110.0, PAD + 16.0);
    s + "</svg>\n"
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_are_well_formed_svg_with_both_lines() {
        let h = History {
            step: 3,
            train: vec![Point { step: 1, loss: 3.0 }, Point { step: 2, loss: 2.0 }, Point { step: 3, loss: 1.5 }],
            val: vec![Point { step: 3, loss: 2.5 }],
            ..Default::default()
        };
        let svg = loss_curve(&h, "a <run>");
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let lines: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("polyline")).collect();
        assert_eq!(lines.len(), 2);
        // The highest loss sits at the top of the plot, the lowest at the bottom.
        assert_eq!(lines[0].attribute("points").unwrap().split(' ').next().unwrap(), "229.3,48.0");
        assert!(svg.contains("a &lt;run&gt;"));
    }
}

//! Charts drawn on the server as SVG (no script, readable without colour: every bar has its
//! number, and each chart has a text alternative).

use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Horizontal bars, one per (label, value, colour).
pub fn bars(title: &str, rows: &[(String, u64, &str)]) -> String {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let (w, row_h, label_w) = (520u64, 26u64, 170u64);
    let h = row_h * rows.len() as u64 + 10;
    let desc: Vec<String> = rows.iter().map(|(l, v, _)| format!("{l}: {v}")).collect();
    let mut s = format!(
        r#"<svg role="img" viewBox="0 0 {w} {h}" width="{w}" height="{h}" aria-label="{}"><title>{}</title>"#,
        esc(&format!("{title}: {}", desc.join(", "))),
        esc(title)
    );
    for (i, (label, v, colour)) in rows.iter().enumerate() {
        let y = i as u64 * row_h + 5;
        let bw = (w - label_w - 60) * v / max;
        let _ = write!(
            s,
            r#"<text x="0" y="{ty}">{}</text><rect x="{label_w}" y="{y}" width="{bw}" height="18" fill="{colour}"/><text x="{tx}" y="{ty}">{v}</text>"#,
            esc(label),
            ty = y + 14,
            tx = label_w + bw + 6,
        );
    }
    s.push_str("</svg>");
    s
}

/// Columns over time: per slot, a processed (bottom) and a failed (top) part.
pub fn columns(title: &str, slots: &[(String, u64, u64)]) -> String {
    let max = slots.iter().map(|s| s.1 + s.2).max().unwrap_or(0).max(1);
    let (w, h, base) = (720u64, 200u64, 170u64);
    let n = slots.len().max(1) as u64;
    let cw = (w - 40) / n;
    let total_ok: u64 = slots.iter().map(|s| s.1).sum();
    let total_failed: u64 = slots.iter().map(|s| s.2).sum();
    let mut s = format!(
        r#"<svg role="img" viewBox="0 0 {w} {h}" width="{w}" height="{h}" aria-label="{}"><title>{}</title>"#,
        esc(&format!(
            "{title}: {total_ok} processed and {total_failed} failed over the period"
        )),
        esc(title)
    );
    let _ = write!(
        s,
        r##"<line x1="30" y1="{base}" x2="{w}" y2="{base}" stroke="#9aa4b0"/><text x="0" y="14">{max}</text><text x="0" y="{base}">0</text>"##
    );
    for (i, (label, ok, failed)) in slots.iter().enumerate() {
        let x = 40 + i as u64 * cw;
        let hok = (base - 20) * ok / max;
        let hf = (base - 20) * failed / max;
        let _ = write!(
            s,
            r##"<rect x="{x}" y="{}" width="{bw}" height="{hok}" fill="#1a7f37"><title>{}: {ok} processed</title></rect><rect x="{x}" y="{}" width="{bw}" height="{hf}" fill="#b42318"><title>{}: {failed} failed</title></rect>"##,
            base - hok,
            esc(label),
            base - hok - hf,
            esc(label),
            bw = cw.saturating_sub(2).max(1),
        );
        if i % 3 == 0 {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                x + cw / 2,
                base + 16,
                esc(label)
            );
        }
    }
    s.push_str("</svg>");
    s
}

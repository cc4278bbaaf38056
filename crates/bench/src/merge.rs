//! Merging the sections of a partial run (`--only …`) into a full `docs/benchmarks.md`.
//!
//! A full run writes the whole page. A run of some benchmarks only writes a page of its own
//! (`--out`); `serversync-bench merge --from THAT --into docs/benchmarks.md` then puts its
//! benchmark sections into the full page: a section with the same name (the heading up to
//! its first colon) is replaced, a new one goes before "Targets". The exact commands of the
//! partial run replace the bullets of the same tool and add the new ones; its machine and
//! versions rows are added where the page has none of that name (a row the page has with
//! another value is named in the provenance line instead of overwriting the full run's).
//! The targets the partial run measured replace the page's rows of the same target (the
//! others, and the rows it adds, stay in order).
//! The page's header lists each merged section with the command and the time of its run.

use anyhow::{Result, bail};

const VERSIONS: &str = "Machine and versions";
const TARGETS: &str = "Targets";
const COMMANDS: &str = "Exact commands";
const LATER_RUNS: &str = "Sections measured in a later run of the benchmark on the same \
     machine, not in the run above:";

/// A page cut at its `## ` headings.
struct Page {
    header: String,
    /// (heading line without the newline, the text after it up to the next heading)
    sections: Vec<(String, String)>,
}

fn key(heading: &str) -> &str {
    let t = heading.trim_start_matches('#').trim();
    t.split(':').next().unwrap_or(t).trim()
}

fn parse(text: &str) -> Page {
    let mut header = String::new();
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut fenced = false;
    for line in text.split_inclusive('\n') {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        if !fenced && line.starts_with("## ") {
            sections.push((line.trim_end().to_owned(), String::new()));
            continue;
        }
        match sections.last_mut() {
            Some((_, body)) => body.push_str(line),
            None => header.push_str(line),
        }
    }
    Page { header, sections }
}

impl Page {
    fn find(&self, k: &str) -> Option<usize> {
        self.sections.iter().position(|(h, _)| key(h) == k)
    }

    fn render(&self) -> String {
        let mut o = self.header.clone();
        for (h, body) in &self.sections {
            o.push_str(h);
            o.push('\n');
            o.push_str(body);
        }
        o
    }
}

/// `| key | value |` rows of a table.
fn rows(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim().trim_matches('|').split('|').collect();
            (cells.len() >= 2).then(|| (cells[0].trim().to_owned(), cells[1].trim().to_owned()))
        })
        .filter(|(k, _)| k != "what")
        .collect()
}

/// The table of `page` (a section body: text, a table, text) with the rows of `update`'s
/// table: a row whose first cell the page has replaces it, the others go after the last row.
fn merge_table(page: &str, update: &str) -> String {
    let first = |l: &str| {
        l.trim()
            .trim_matches('|')
            .split('|')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    let is_row = |l: &str| l.starts_with('|') && !l.starts_with("|---");
    let new: Vec<&str> = update.lines().filter(|l| is_row(l)).skip(1).collect();
    let mut lines: Vec<String> = page.lines().map(str::to_owned).collect();
    let mut added = Vec::new();
    for row in new {
        match lines
            .iter_mut()
            .skip(1)
            .find(|l| is_row(l) && first(l) == first(row))
        {
            Some(slot) => *slot = row.to_owned(),
            None => added.push(row.to_owned()),
        }
    }
    let last = lines
        .iter()
        .rposition(|l| is_row(l))
        .unwrap_or(lines.len().saturating_sub(1));
    for (n, row) in added.into_iter().enumerate() {
        lines.insert(last + 1 + n, row);
    }
    let mut out = lines.join("\n");
    if page.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Top-level bullets (`- name: …` with their continuation lines), keyed by the name.
fn bullets(body: &str) -> (String, Vec<(String, String)>) {
    let mut intro = String::new();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut fenced = false;
    for line in body.split_inclusive('\n') {
        if !fenced && line.starts_with("- ") {
            let name = line[2..].split(':').next().unwrap_or("").trim().to_owned();
            out.push((name, line.to_owned()));
        } else if let Some((_, b)) = out.last_mut() {
            b.push_str(line);
        } else {
            intro.push_str(line);
        }
        if line.starts_with("```") {
            fenced = !fenced;
        }
    }
    (intro, out)
}

/// "`COMMAND` on DATE" of a page's "Produced by …" line.
fn provenance(header: &str) -> Option<String> {
    let rest = header.split("Produced by `").nth(1)?;
    let (cmd, rest) = rest.split_once('`')?;
    let date = rest
        .trim_start()
        .strip_prefix("on ")?
        .split(" (UTC)")
        .next()?;
    Some(format!("`{cmd}` on {date} (UTC)"))
}

/// `base` (a full page) with the benchmark sections of `update` (a partial run's page).
pub fn merge(base: &str, update: &str) -> Result<String> {
    let mut page = parse(base);
    let new = parse(update);
    let Some(from) = provenance(&new.header) else {
        bail!("the page to merge has no \"Produced by `…` on …\" line");
    };
    let mut merged = Vec::new();
    for (heading, body) in &new.sections {
        let k = key(heading);
        if [VERSIONS, TARGETS, COMMANDS].contains(&k) {
            continue;
        }
        merged.push(k.to_owned());
        match page.find(k) {
            Some(i) => page.sections[i] = (heading.clone(), body.clone()),
            None => {
                let at = page
                    .find(TARGETS)
                    .or_else(|| page.find(COMMANDS))
                    .unwrap_or(page.sections.len());
                page.sections.insert(at, (heading.clone(), body.clone()));
            }
        }
    }
    if merged.is_empty() {
        bail!("the page to merge has no benchmark section");
    }
    // Versions: add the rows the page lacks; name the ones that differ.
    let mut differing = Vec::new();
    if let (Some(i), Some(j)) = (page.find(VERSIONS), new.find(VERSIONS)) {
        let have = rows(&page.sections[i].1);
        let mut body = page.sections[i].1.trim_end().to_owned();
        for (k, v) in rows(&new.sections[j].1) {
            match have.iter().find(|(hk, _)| *hk == k) {
                None => body.push_str(&format!("\n| {k} | {v} |")),
                Some((_, hv)) if *hv != v && k != "machine" => differing.push(format!("{k} {v}")),
                Some(_) => {}
            }
        }
        body.push_str("\n\n");
        page.sections[i].1 = body;
    }
    // Exact commands: the update's bullets replace the page's of the same name.
    if let (Some(i), Some(j)) = (page.find(COMMANDS), new.find(COMMANDS)) {
        let (intro, mut have) = bullets(&page.sections[i].1);
        for (k, b) in bullets(&new.sections[j].1).1 {
            match have.iter_mut().find(|(hk, _)| *hk == k) {
                Some(slot) => slot.1 = b,
                None => have.push((k, b)),
            }
        }
        let mut body = intro;
        for (_, b) in have {
            body.push_str(&b);
        }
        page.sections[i].1 = body;
    }
    // Targets: the update's rows replace the page's of the same target; new ones are added.
    if let (Some(i), Some(j)) = (page.find(TARGETS), new.find(TARGETS)) {
        page.sections[i].1 = merge_table(&page.sections[i].1, &new.sections[j].1);
    }
    // The header: which sections come from which later run.
    let (lead, mut list) = match page.header.split_once(LATER_RUNS) {
        Some((lead, rest)) => {
            let (_, entries) = bullets(rest.trim_start_matches('\n'));
            (lead.trim_end().to_owned(), entries)
        }
        None => (page.header.trim_end().to_owned(), Vec::new()),
    };
    for k in merged {
        let mut line = format!("- {k}: {from}");
        if !differing.is_empty() {
            line.push_str(&format!(", with {}", differing.join(", ")));
        }
        line.push('\n');
        match list.iter_mut().find(|(lk, _)| *lk == k) {
            Some(slot) => slot.1 = line,
            None => list.push((k, line)),
        }
    }
    let mut header = format!("{lead}\n\n{LATER_RUNS}\n\n");
    for (_, b) in list {
        header.push_str(b.trim_end());
        header.push('\n');
    }
    header.push('\n');
    page.header = header;
    Ok(page.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_rows_are_replaced_by_name_and_new_ones_added() {
        let page = "\n| target | wanted | measured | |\n|---|---|---|---|\n| a | ≥ 1 | 0.5 | **missed** |\n| b | ≤ 2 | 1 | met |\n\nWhat bounds it.\n";
        let update = "\n| target | wanted | measured | |\n|---|---|---|---|\n| b | ≤ 2 | 3 | **missed** |\n| c | ≤ 5 | 4 | met |\n";
        assert_eq!(
            merge_table(page, update),
            "\n| target | wanted | measured | |\n|---|---|---|---|\n| a | ≥ 1 | 0.5 | **missed** |\n| b | ≤ 2 | 3 | **missed** |\n| c | ≤ 5 | 4 | met |\n\nWhat bounds it.\n"
        );
    }

    const FULL: &str = "# Benchmarks\n\nProduced by `scripts/bench.sh` on 2026-12-05 22:22 (UTC): \
        every figure.\n\n## Machine and versions\n\n| what | version |\n|---|---|\n\
        | machine | 2 cores |\n| rustc | 1.95 |\n\n## Ingest: 10 messages\n\nold ingest\n\n\
        ## Targets\n\n| t |\n\n## Exact commands\n\n- serversync: `serve` old\n\
        - mbsync: `mbsync` with\n\n```\n- not a bullet\n## not a heading\n```\n";

    const PART: &str = "# Benchmarks\n\nProduced by `scripts/bench.sh --only dav` on \
        2026-12-06 10:00 (UTC): every figure.\n\n## Machine and versions\n\n\
        | what | version |\n|---|---|\n| machine | 2 cores |\n| rustc | 1.96 |\n\
        | vdirsyncer | 0.19 |\n\n## Two-way sync (CalDAV/CardDAV): first sync of 5\n\nnew dav\n\n\
        ## Exact commands\n\n- serversync: `serve` new\n- vdirsyncer: `vdirsyncer sync`\n";

    #[test]
    fn a_partial_run_adds_its_section_rows_and_commands() {
        let out = merge(FULL, PART).unwrap();
        assert!(out.contains("old ingest"), "{out}");
        let dav = out.find("## Two-way sync").unwrap();
        assert!(out.find("## Ingest").unwrap() < dav && dav < out.find("## Targets").unwrap());
        assert!(out.contains("| vdirsyncer | 0.19 |\n\n## Ingest"), "{out}");
        assert!(
            out.contains("| rustc | 1.95 |"),
            "the full run's row stays: {out}"
        );
        assert!(
            out.contains(
                "- Two-way sync (CalDAV/CardDAV): `scripts/bench.sh --only dav` on \
                 2026-12-06 10:00 (UTC), with rustc 1.96\n"
            ),
            "{out}"
        );
        assert!(out.contains("- serversync: `serve` new\n- mbsync: `mbsync` with\n\n```\n- not a bullet\n## not a heading\n```\n- vdirsyncer"), "{out}");
        assert!(!out.contains("old\n"), "{out}");
    }

    #[test]
    fn merging_again_replaces_the_section_and_its_provenance() {
        let once = merge(FULL, PART).unwrap();
        let again = merge(
            &once,
            &PART
                .replace("new dav", "newer dav")
                .replace("2026-12-06 10:00", "2026-12-07 09:00"),
        )
        .unwrap();
        assert!(
            again.contains("newer dav") && !again.contains("new dav\n"),
            "{again}"
        );
        assert_eq!(again.matches("## Two-way sync").count(), 1, "{again}");
        assert_eq!(again.matches(LATER_RUNS).count(), 1, "{again}");
        assert!(
            again.contains("2026-12-07 09:00") && !again.contains("2026-12-06"),
            "{again}"
        );
        assert_eq!(again.matches("| vdirsyncer |").count(), 1, "{again}");
        assert_eq!(again.matches("- vdirsyncer:").count(), 1, "{again}");
    }

    #[test]
    fn a_page_without_provenance_or_sections_is_refused() {
        assert!(merge(FULL, "# Benchmarks\n\n## X\n").is_err());
        assert!(
            merge(
                FULL,
                &PART.replace(
                    "## Two-way sync (CalDAV/CardDAV): first sync of 5\n\nnew dav\n\n",
                    ""
                )
            )
            .is_err()
        );
    }
}

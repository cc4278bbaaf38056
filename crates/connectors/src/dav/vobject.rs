//! The content-line codec of iCalendar (RFC 5545) and vCard (RFC 6350, and 3.0, RFC 2426):
//! text ↔ a generic tree of [`Component`]s and [`Property`]s. Pure, no I/O.
//!
//! The tree knows no property or component by name (beyond `BEGIN`/`END`), so whatever
//! serversync does not map — alarms, time zones, `X-` properties, unknown parameters, groups
//! (`item1.EMAIL`) — survives a parse → edit → serialize unchanged. Property values stay raw
//! (still escaped): [`unescape_text`], [`escape_text`] and [`split_raw`] read and write TEXT.
//!
//! Reading: lines are unfolded (CRLF or a bare LF followed by a space or tab), empty lines are
//! skipped, parameter values may be quoted and are RFC 6868-decoded (`^n`, `^^`, `^'`),
//! `BEGIN`/`END` must nest. Writing: CRLF line ends, lines folded at 75 octets without
//! splitting a UTF-8 character, parameter values quoted when they hold `:`, `;` or `,`.
//!
//! Bounds for hostile input: at most [`MAX_TEXT`] bytes of text, components nested at most
//! [`MAX_DEPTH`] deep, at most [`MAX_LINES`] properties and components in all. Anything else
//! is an error naming the line, never a panic.

/// The most text [`parse`] reads (4 MiB).
pub const MAX_TEXT: usize = 4 * 1024 * 1024;
/// How deep components may nest (`VCALENDAR` › `VEVENT` › `VALARM` is 3).
pub const MAX_DEPTH: usize = 8;
/// The most properties and components [`parse`] reads, all components together.
pub const MAX_LINES: usize = 50_000;
/// Octets on one written line, CRLF not counted (RFC 5545 §3.1).
const FOLD_AT: usize = 75;

/// Why a text is not a well-formed iCalendar or vCard stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VobjectError {
    #[error("the text is {0} bytes long, more than the {MAX_TEXT} bytes allowed")]
    TooLarge(usize),
    /// `line` is the (physical, 1-based) line where the offending content line starts.
    #[error("line {line}: {what}")]
    Line { line: usize, what: String },
}

fn at(line: usize, what: impl Into<String>) -> VobjectError {
    VobjectError::Line {
        line,
        what: what.into(),
    }
}

/// A component: `BEGIN:NAME`, its properties, its sub-components, `END:NAME`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Component {
    /// Upper-case (`VCALENDAR`, `VEVENT`, `VCARD`…).
    pub name: String,
    /// In their order in the text.
    pub properties: Vec<Property>,
    /// In their order in the text (written after the properties).
    pub components: Vec<Component>,
}

/// One content line: `group.NAME;PARAM=a,"b;c":value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// The vCard group (`item1` of `item1.EMAIL`), as written.
    pub group: Option<String>,
    /// Upper-case.
    pub name: String,
    /// Upper-case parameter names with their decoded values, in order. No values: a bare
    /// parameter (vCard 2.1's `;HOME`), written without `=`.
    pub params: Vec<(String, Vec<String>)>,
    /// The raw value, still escaped. Must not hold a line break.
    pub value: String,
}

impl Property {
    /// A property without group or parameters (`name` is upper-cased).
    pub fn new(name: &str, value: impl Into<String>) -> Property {
        Property {
            group: None,
            name: name.to_ascii_uppercase(),
            params: Vec::new(),
            value: value.into(),
        }
    }

    /// The first value of the parameter `name` (case-insensitive).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }

    /// Sets the parameter `name` to one value, replacing any values it had.
    pub fn set_param(&mut self, name: &str, value: impl Into<String>) {
        let values = vec![value.into()];
        match self
            .params
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, v)) => *v = values,
            None => self.params.push((name.to_ascii_uppercase(), values)),
        }
    }

    /// Removes the parameter `name`.
    pub fn remove_param(&mut self, name: &str) {
        self.params.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// The value as TEXT ([`unescape_text`]).
    pub fn text(&self) -> String {
        unescape_text(&self.value)
    }

    fn write_to(&self, out: &mut String) {
        let mut line = String::with_capacity(self.name.len() + self.value.len() + 16);
        if let Some(g) = &self.group {
            line.push_str(g);
            line.push('.');
        }
        line.push_str(&self.name);
        for (name, values) in &self.params {
            line.push(';');
            line.push_str(name);
            for (i, v) in values.iter().enumerate() {
                line.push(if i == 0 { '=' } else { ',' });
                let v = encode_param(v);
                if v.contains([':', ';', ',']) {
                    line.push('"');
                    line.push_str(&v);
                    line.push('"');
                } else {
                    line.push_str(&v);
                }
            }
        }
        line.push(':');
        line.push_str(&self.value);
        fold_into(out, &line);
    }
}

impl Component {
    /// An empty component (`name` is upper-cased).
    pub fn new(name: &str) -> Component {
        Component {
            name: name.to_ascii_uppercase(),
            ..Component::default()
        }
    }

    /// The first property named `name` (case-insensitive).
    pub fn prop(&self, name: &str) -> Option<&Property> {
        self.properties
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The first property named `name`, to change it.
    pub fn prop_mut(&mut self, name: &str) -> Option<&mut Property> {
        self.properties
            .iter_mut()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// Every property named `name`, in order.
    pub fn props<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Property> + 'a {
        self.properties
            .iter()
            .filter(move |p| p.name.eq_ignore_ascii_case(name))
    }

    /// Sets the raw `value` of the first property named `name`, keeping its group and
    /// parameters, and removes the others of that name; appends a new property when there is
    /// none.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        let mut seen = false;
        self.properties.retain_mut(|p| {
            if !p.name.eq_ignore_ascii_case(name) {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            p.value.clone_from(&value);
            true
        });
        if !seen {
            self.properties.push(Property::new(name, value));
        }
    }

    /// Removes every property named `name`.
    pub fn remove(&mut self, name: &str) {
        self.properties
            .retain(|p| !p.name.eq_ignore_ascii_case(name));
    }

    /// The first sub-component named `name`.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The component as text: CRLF line ends, lines folded at 75 octets.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_to(&mut out);
        out
    }

    fn write_to(&self, out: &mut String) {
        fold_into(out, &format!("BEGIN:{}", self.name));
        for p in &self.properties {
            p.write_to(out);
        }
        for c in &self.components {
            c.write_to(out);
        }
        fold_into(out, &format!("END:{}", self.name));
    }
}

/// Appends `line` folded: at most [`FOLD_AT`] octets a line, continuation lines starting with
/// a space, never splitting a UTF-8 character.
fn fold_into(out: &mut String, line: &str) {
    let mut rest = line;
    let mut limit = FOLD_AT;
    loop {
        if rest.len() <= limit {
            out.push_str(rest);
            out.push_str("\r\n");
            return;
        }
        let mut cut = limit;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&rest[..cut]);
        out.push_str("\r\n ");
        rest = &rest[cut..];
        limit = FOLD_AT - 1;
    }
}

/// Parses every top-level component of `text` (a file may hold several, e.g. VCARDs).
pub fn parse(text: &str) -> Result<Vec<Component>, VobjectError> {
    if text.len() > MAX_TEXT {
        return Err(VobjectError::TooLarge(text.len()));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut done = Vec::new();
    // Open components with the line of their BEGIN.
    let mut open: Vec<(Component, usize)> = Vec::new();
    let mut count = 0usize;
    for (line, content) in unfold(text)? {
        let p = parse_line(&content).map_err(|what| at(line, what))?;
        match p.name.as_str() {
            "BEGIN" | "END" => {
                let name = p.value.trim().to_ascii_uppercase();
                if name.is_empty() {
                    return Err(at(line, format!("{} without a component name", p.name)));
                }
                if p.name == "BEGIN" {
                    count += 1;
                    if count > MAX_LINES {
                        return Err(at(line, format!("more than {MAX_LINES} properties")));
                    }
                    if open.len() >= MAX_DEPTH {
                        return Err(at(
                            line,
                            format!("BEGIN:{name} nests components more than {MAX_DEPTH} deep"),
                        ));
                    }
                    open.push((Component::new(&name), line));
                    continue;
                }
                let (c, _) = match open.pop() {
                    None => return Err(at(line, format!("END:{name} without a BEGIN"))),
                    Some((c, begun)) if c.name != name => {
                        return Err(at(
                            line,
                            format!("END:{name} closes BEGIN:{} of line {begun}", c.name),
                        ));
                    }
                    Some(c) => c,
                };
                match open.last_mut() {
                    Some((parent, _)) => parent.components.push(c),
                    None => done.push(c),
                }
            }
            _ => {
                count += 1;
                if count > MAX_LINES {
                    return Err(at(line, format!("more than {MAX_LINES} properties")));
                }
                match open.last_mut() {
                    Some((c, _)) => c.properties.push(p),
                    None => {
                        return Err(at(line, format!("{} outside of BEGIN … END", p.name)));
                    }
                }
            }
        }
    }
    if let Some((c, begun)) = open.pop() {
        return Err(at(begun, format!("BEGIN:{} has no END", c.name)));
    }
    Ok(done)
}

/// The logical lines of `text` with the physical line each starts on.
fn unfold(text: &str) -> Result<Vec<(usize, String)>, VobjectError> {
    let mut lines: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(rest) = raw.strip_prefix([' ', '\t']) {
            match lines.last_mut() {
                Some((_, l)) => l.push_str(rest),
                None => {
                    return Err(at(i + 1, "a continuation line with no line before it"));
                }
            }
        } else if !raw.is_empty() {
            lines.push((i + 1, raw.to_owned()));
        }
    }
    Ok(lines)
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One unfolded content line.
fn parse_line(line: &str) -> Result<Property, String> {
    let shown = || shorten(line, 60);
    let end = line
        .find([';', ':'])
        .ok_or_else(|| format!("{:?} has no ':'", shown()))?;
    let (group, name) = match line[..end].split_once('.') {
        Some((g, n)) => (Some(g), n),
        None => (None, &line[..end]),
    };
    if !is_name(name) || !group.is_none_or(is_name) {
        return Err(format!(
            "{:?} is not a property name",
            shorten(&line[..end], 60)
        ));
    }
    let name = name.to_ascii_uppercase();
    let mut rest = &line[end..];
    let mut params = Vec::new();
    while let Some(r) = rest.strip_prefix(';') {
        let e = r
            .find(['=', ';', ':'])
            .ok_or_else(|| format!("{name}: a parameter and no ':'"))?;
        let pname = &r[..e];
        if !is_name(pname) {
            return Err(format!(
                "{name}: {:?} is not a parameter name",
                shorten(pname, 40)
            ));
        }
        rest = &r[e..];
        let mut values = Vec::new();
        if let Some(mut r) = rest.strip_prefix('=') {
            loop {
                if let Some(q) = r.strip_prefix('"') {
                    let close = q
                        .find('"')
                        .ok_or_else(|| format!("{name}: parameter {pname}: an unclosed quote"))?;
                    values.push(decode_param(&q[..close]));
                    r = &q[close + 1..];
                } else {
                    let e = r.find([',', ';', ':']).unwrap_or(r.len());
                    values.push(decode_param(&r[..e]));
                    r = &r[e..];
                }
                match r.strip_prefix(',') {
                    Some(next) => r = next,
                    None => break,
                }
            }
            rest = r;
        }
        params.push((pname.to_ascii_uppercase(), values));
    }
    let value = rest.strip_prefix(':').ok_or_else(|| {
        format!(
            "{name}: expected ':' after the parameters, found {:?}",
            shorten(rest, 20)
        )
    })?;
    Ok(Property {
        group: group.map(str::to_owned),
        name,
        params,
        value: value.to_owned(),
    })
}

fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// RFC 6868: `^n` newline, `^^` caret, `^'` double quote; any other `^` stays.
fn decode_param(v: &str) -> String {
    if !v.contains('^') {
        return v.to_owned();
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '^' {
            match chars.peek() {
                Some('n') => out.push('\n'),
                Some('^') => out.push('^'),
                Some('\'') => out.push('"'),
                _ => {
                    out.push('^');
                    continue;
                }
            }
            chars.next();
        } else {
            out.push(c);
        }
    }
    out
}

fn encode_param(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['^', '\n', '"']) {
        return v.into();
    }
    let mut out = String::with_capacity(v.len() + 4);
    for c in v.chars() {
        match c {
            '^' => out.push_str("^^"),
            '\n' => out.push_str("^n"),
            '"' => out.push_str("^'"),
            c => out.push(c),
        }
    }
    out.into()
}

/// A TEXT value unescaped: `\\` `\;` `\,` `\n` `\N`. A backslash before any other character
/// is dropped (`\:` → `:`), a trailing one kept.
pub fn unescape_text(raw: &str) -> String {
    if !raw.contains('\\') {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n' | 'N') => out.push('\n'),
            Some(c) => out.push(c),
            None => out.push('\\'),
        }
    }
    out
}

/// Text escaped as a TEXT value: `\` `;` `,` and line breaks (CRLF, CR or LF become `\n`).
pub fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\\n");
            }
            c => out.push(c),
        }
    }
    out
}

/// A raw value split at every `sep` that is not escaped by a backslash (the components of
/// `N`/`ORG`, the items of `CATEGORIES`); the parts stay raw.
pub fn split_raw(raw: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in raw.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&raw[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&raw[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Test//EN\r\n\
        BEGIN:VEVENT\r\nUID:1@example.com\r\nDTSTART;TZID=Europe/Berlin:20261210T100000\r\n\
        SUMMARY:Review\\, part 1\r\nX-FOO;X-BAR=\"a:b\",c:1\r\n\
        BEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT15M\r\nEND:VALARM\r\n\
        END:VEVENT\r\nEND:VCALENDAR\r\n";

    fn line_of(e: VobjectError) -> usize {
        match e {
            VobjectError::Line { line, .. } => line,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn parse_builds_the_tree() {
        let tree = parse(EVENT).unwrap();
        assert_eq!(tree.len(), 1);
        let cal = &tree[0];
        assert_eq!(cal.name, "VCALENDAR");
        let ev = cal.component("vevent").unwrap();
        let start = ev.prop("dtstart").unwrap();
        assert_eq!(start.param("tzid"), Some("Europe/Berlin"));
        assert_eq!(start.value, "20261210T100000");
        assert_eq!(ev.prop("SUMMARY").unwrap().text(), "Review, part 1");
        let foo = ev.prop("X-FOO").unwrap();
        assert_eq!(
            foo.params,
            vec![("X-BAR".into(), vec!["a:b".into(), "c".into()])]
        );
        assert_eq!(foo.value, "1");
        assert_eq!(ev.components[0].name, "VALARM");
    }

    #[test]
    fn round_trip_is_exact() {
        let tree = parse(EVENT).unwrap();
        let text = tree[0].to_text();
        assert_eq!(text, EVENT);
        assert_eq!(parse(&text).unwrap(), tree);
    }

    #[test]
    fn lf_line_ends_folds_tabs_and_empty_lines_are_read() {
        let text = "BEGIN:VCARD\nVERSION:3.0\n\nFN:Ann\n  Lee\nNOTE:a\n\tb\nitem1.EMAIL;type=INTERNET;type=pref:ann@example.com\nEND:VCARD\n";
        let card = &parse(text).unwrap()[0];
        assert_eq!(card.prop("FN").unwrap().value, "Ann Lee");
        assert_eq!(card.prop("NOTE").unwrap().value, "ab");
        let email = card.prop("EMAIL").unwrap();
        assert_eq!(email.group.as_deref(), Some("item1"));
        assert_eq!(email.params.len(), 2);
        assert_eq!(email.params[1], ("TYPE".into(), vec!["pref".into()]));
    }

    #[test]
    fn several_top_level_components() {
        let text = "BEGIN:VCARD\r\nFN:A\r\nEND:VCARD\r\nBEGIN:VCARD\r\nFN:B\r\nEND:VCARD\r\n";
        let cards = parse(text).unwrap();
        assert_eq!(cards.len(), 2);
        assert_eq!(cards[1].prop("FN").unwrap().value, "B");
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn long_multibyte_lines_fold_at_75_octets_on_character_boundaries() {
        let mut c = Component::new("VEVENT");
        let summary = "Größenänderung — 会議室の予約 ".repeat(12);
        c.set("SUMMARY", escape_text(&summary));
        c.properties.push(Property {
            group: None,
            name: "X-LONG".into(),
            params: vec![("X-P".into(), vec!["ä".repeat(60)])],
            value: "€".repeat(100),
        });
        let text = c.to_text();
        for line in text.split("\r\n") {
            assert!(line.len() <= 75, "{} octets: {line}", line.len());
        }
        assert!(text.lines().count() > 10);
        let back = parse(&text).unwrap();
        assert_eq!(back, vec![c.clone()]);
        assert_eq!(back[0].prop("SUMMARY").unwrap().text(), summary);
    }

    #[test]
    fn parameter_values_are_quoted_and_rfc6868_encoded() {
        let mut p = Property::new("ATTENDEE", "mailto:a@example.com");
        p.set_param("CN", "Lee, Ann; \"Sales\"");
        p.set_param("X-NOTE", "two\nlines ^ caret");
        p.params.push(("X-BARE".into(), vec![]));
        p.params.push(("X-EMPTY".into(), vec![String::new()]));
        let mut c = Component::new("VEVENT");
        c.properties.push(p.clone());
        let text = c.to_text();
        assert!(
            text.replace("\r\n ", "")
                .contains("CN=\"Lee, Ann; ^'Sales^'\";X-NOTE=two^nlines ^^ caret;X-BARE;X-EMPTY=:"),
            "{text}"
        );
        let back = parse(&text).unwrap();
        assert_eq!(back[0].properties[0], p);
        // A lone caret is kept as it is.
        let t = "BEGIN:X\r\nA;P=x^y:v\r\nEND:X\r\n";
        assert_eq!(parse(t).unwrap()[0].properties[0].param("P"), Some("x^y"));
    }

    #[test]
    fn helpers_set_and_remove_properties() {
        let mut c = Component::new("vevent");
        assert_eq!(c.name, "VEVENT");
        c.properties.push(Property::new("CATEGORIES", "A"));
        c.properties.push(Property::new("CATEGORIES", "B"));
        let mut loc = Property::new("LOCATION", "Room 1");
        loc.set_param("LANGUAGE", "en");
        c.properties.push(loc);
        assert_eq!(c.props("categories").count(), 2);
        c.set("categories", "C");
        assert_eq!(
            c.props("CATEGORIES")
                .map(|p| &p.value[..])
                .collect::<Vec<_>>(),
            ["C"]
        );
        c.set("location", "Room 2");
        assert_eq!(c.prop("LOCATION").unwrap().param("language"), Some("en"));
        c.set("summary", "New");
        assert_eq!(c.prop("SUMMARY").unwrap().value, "New");
        c.remove("Categories");
        assert!(c.prop("CATEGORIES").is_none());
        c.prop_mut("LOCATION").unwrap().remove_param("LANGUAGE");
        assert!(c.prop("LOCATION").unwrap().params.is_empty());
    }

    #[test]
    fn text_escapes() {
        assert_eq!(escape_text("a\\b;c,d\ne\r\nf"), "a\\\\b\\;c\\,d\\ne\\nf");
        assert_eq!(
            unescape_text("a\\\\b\\;c\\,d\\ne\\Nf\\:g\\"),
            "a\\b;c,d\ne\nf:g\\"
        );
        let s = "x;y,z\\\nw";
        assert_eq!(unescape_text(&escape_text(s)), s);
        assert_eq!(split_raw("Lee;Ann\\;B;;", ';'), ["Lee", "Ann\\;B", "", ""]);
        assert_eq!(split_raw("a\\\\,b", ','), ["a\\\\", "b"]);
    }

    #[test]
    fn nesting_errors_name_the_line() {
        let e = parse("BEGIN:VCALENDAR\nBEGIN:VEVENT\nEND:VCALENDAR\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 3: END:VCALENDAR closes BEGIN:VEVENT of line 2"
        );
        let e = parse("BEGIN:VCALENDAR\nBEGIN:VEVENT\nEND:VEVENT\n").unwrap_err();
        assert_eq!(e.to_string(), "line 1: BEGIN:VCALENDAR has no END");
        assert_eq!(line_of(parse("BEGIN:A\nEND:A\nEND:A\n").unwrap_err()), 3);
        assert_eq!(line_of(parse("FN:x\n").unwrap_err()), 1);
        assert_eq!(line_of(parse(" x\n").unwrap_err()), 1);
        assert_eq!(line_of(parse("BEGIN:A\nno colon\nEND:A").unwrap_err()), 2);
        assert_eq!(
            line_of(parse("BEGIN:A\nX;P=\"open:v\nEND:A").unwrap_err()),
            2
        );
        assert_eq!(
            line_of(parse("BEGIN:A\nX;P=\"q\"z:v\nEND:A").unwrap_err()),
            2
        );
        assert_eq!(line_of(parse("BEGIN:A\na.b.c:v\nEND:A").unwrap_err()), 2);
        assert_eq!(line_of(parse("BEGIN:A\nBAD NAME:v\nEND:A").unwrap_err()), 2);
        assert_eq!(line_of(parse("BEGIN:\nEND:").unwrap_err()), 1);
    }

    #[test]
    fn limits_are_errors() {
        let deep: String = (0..=MAX_DEPTH).map(|i| format!("BEGIN:C{i}\n")).collect();
        let e = parse(&deep).unwrap_err();
        assert_eq!(line_of(e.clone()), MAX_DEPTH + 1, "{e}");
        assert!(e.to_string().contains("more than 8 deep"));
        let ok: String = (0..MAX_DEPTH)
            .map(|i| format!("BEGIN:C{i}\n"))
            .collect::<String>()
            + &(0..MAX_DEPTH)
                .rev()
                .map(|i| format!("END:C{i}\n"))
                .collect::<String>();
        assert_eq!(parse(&ok).unwrap().len(), 1);

        let many = format!("BEGIN:A\n{}END:A\n", "X:1\n".repeat(MAX_LINES));
        let e = parse(&many).unwrap_err();
        assert!(e.to_string().contains("more than 50000 properties"), "{e}");

        let big = format!("BEGIN:A\nX:{}\nEND:A\n", "x".repeat(MAX_TEXT));
        assert!(matches!(parse(&big), Err(VobjectError::TooLarge(_))));
    }

    #[test]
    fn bom_and_odd_carriage_returns_survive() {
        let tree = parse("\u{feff}BEGIN:A\r\nX:a\rb\r\r\nEND:A\r\n").unwrap();
        assert_eq!(tree[0].properties[0].value, "a\rb\r");
        assert_eq!(parse(&tree[0].to_text()).unwrap(), tree);
    }
}

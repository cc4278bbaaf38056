//! Pure parsing for synchronization: whole IMAP responses with their literals kept as raw
//! bytes (FETCH data with message bodies, VANISHED, SEARCH, LIST, ENABLED), UID sets,
//! INTERNALDATE values and modified UTF-7 folder names.
//!
//! A response arrives as text pieces separated by literals: `* 3 FETCH (UID 7 BODY[] {5}`,
//! five raw bytes, `)`. [`RawResponse`] keeps exactly that shape; the tokenizer walks the
//! pieces and hands out a literal by index, so a message body is moved, never copied or
//! decoded as text.

use std::fmt;

use base64::Engine as _;

use crate::imap::parse::{ResponseLine, StatusResponse, Untagged, parse_line, shorten};

/// A literal as read: the bytes kept (at most the reader's limit) and the length the
/// server announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Literal {
    pub data: Vec<u8>,
    pub announced: u64,
}

impl Literal {
    /// Whether bytes beyond the reader's limit were discarded.
    pub fn is_cut(&self) -> bool {
        (self.data.len() as u64) < self.announced
    }
}

/// One response as read from the wire: `pieces[i]` is followed by `literals[i]`; the last
/// piece ends the response (`pieces.len() == literals.len() + 1`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawResponse {
    pub pieces: Vec<Vec<u8>>,
    pub literals: Vec<Literal>,
}

impl RawResponse {
    /// A response without literals (for tests).
    pub fn line(text: &str) -> Self {
        RawResponse {
            pieces: vec![text.as_bytes().to_vec()],
            literals: Vec::new(),
        }
    }

    /// Bytes held: the text and the literal bytes kept.
    pub fn size(&self) -> usize {
        self.pieces.iter().map(Vec::len).sum::<usize>()
            + self.literals.iter().map(|l| l.data.len()).sum::<usize>()
    }

    /// The text with each literal replaced by its bytes, lossily decoded (for the generic
    /// status-line parser and for messages).
    fn lossy_text(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, piece) in self.pieces.iter().enumerate() {
            out.extend_from_slice(piece);
            if let Some(lit) = self.literals.get(i) {
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&lit.data);
            }
        }
        out
    }
}

/// A set of UIDs as ranges (`41,43:116`), as VANISHED and COPYUID report them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidSet {
    /// Inclusive, ascending, non-overlapping, non-adjacent ranges.
    ranges: Vec<(u32, u32)>,
}

impl UidSet {
    /// From UIDs in any order, duplicates allowed.
    pub fn from_uids(uids: &[u32]) -> Self {
        let mut sorted: Vec<u32> = uids.iter().copied().filter(|&u| u > 0).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for u in sorted {
            match ranges.last_mut() {
                Some((_, hi)) if hi.checked_add(1) == Some(u) => *hi = u,
                _ => ranges.push((u, u)),
            }
        }
        UidSet { ranges }
    }

    /// Parses `1,3:5,9` (ranges in either order, like `5:3`). `*` is refused: a set
    /// reported by a server is always concrete.
    pub fn parse(s: &str) -> Option<Self> {
        let mut uids_ranges = Vec::new();
        for part in s.split(',') {
            let (lo, hi) = match part.split_once(':') {
                Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
                None => {
                    let v = part.parse::<u32>().ok()?;
                    (v, v)
                }
            };
            if lo == 0 || hi == 0 {
                return None;
            }
            uids_ranges.push((lo.min(hi), lo.max(hi)));
        }
        Some(UidSet::normalized(uids_ranges))
    }

    /// From ranges in any order, overlapping or adjacent: one sort, one pass.
    fn normalized(mut all: Vec<(u32, u32)>) -> Self {
        all.sort_unstable();
        let mut ranges: Vec<(u32, u32)> = Vec::with_capacity(all.len());
        for (lo, hi) in all {
            match ranges.last_mut() {
                Some((_, h)) if u64::from(lo) <= u64::from(*h) + 1 => *h = (*h).max(hi),
                _ => ranges.push((lo, hi)),
            }
        }
        UidSet { ranges }
    }

    /// The union of many sets, made at once: repeated VANISHED responses cost one sort of
    /// all their ranges, not a merge into the growing set for each.
    pub fn union(sets: impl IntoIterator<Item = UidSet>) -> Self {
        UidSet::normalized(sets.into_iter().flat_map(|s| s.ranges).collect())
    }

    /// How many ranges the set holds (what it costs to keep).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many UIDs the set holds.
    pub fn len(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(lo, hi)| u64::from(hi - lo) + 1)
            .sum()
    }

    pub fn contains(&self, uid: u32) -> bool {
        self.ranges
            .binary_search_by(|&(lo, hi)| {
                if hi < uid {
                    std::cmp::Ordering::Less
                } else if lo > uid {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }

    /// The inclusive ranges, ascending.
    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges
    }

    /// Every UID, ascending (mind [`len`](Self::len) before collecting a huge set).
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ranges.iter().flat_map(|&(lo, hi)| lo..=hi)
    }

    /// Adds another set.
    /// (Each call sorts the whole set again: to add many sets, use [`UidSet::union`].)
    pub fn extend(&mut self, other: &UidSet) {
        if other.is_empty() {
            return;
        }
        let mut all = std::mem::take(&mut self.ranges);
        all.extend_from_slice(&other.ranges);
        *self = UidSet::normalized(all);
    }

    /// Splits into sets of at most `n` UIDs each (for commands of bounded length).
    pub fn chunks(&self, n: usize) -> Vec<UidSet> {
        let n = n.max(1) as u64;
        let mut out = Vec::new();
        let mut current: Vec<(u32, u32)> = Vec::new();
        let mut count = 0u64;
        for &(lo, hi) in &self.ranges {
            let mut lo = lo;
            loop {
                let room = n - count;
                let span = u64::from(hi - lo) + 1;
                if span <= room {
                    current.push((lo, hi));
                    count += span;
                    break;
                }
                let cut = lo + (room as u32) - 1;
                current.push((lo, cut));
                out.push(UidSet {
                    ranges: std::mem::take(&mut current),
                });
                count = 0;
                lo = cut + 1;
            }
            if count == n {
                out.push(UidSet {
                    ranges: std::mem::take(&mut current),
                });
                count = 0;
            }
        }
        if !current.is_empty() {
            out.push(UidSet { ranges: current });
        }
        out
    }
}

impl fmt::Display for UidSet {
    /// The IMAP sequence-set syntax: `1:5,7,9:12`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}:{hi}")?;
            }
        }
        Ok(())
    }
}

/// An INTERNALDATE: the moment the server received the message, with the zone it gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InternalDate {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub timestamp: i64,
    /// The zone's offset from UTC in minutes (`+0200` is 120).
    pub offset_minutes: i16,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

impl InternalDate {
    pub fn from_timestamp(timestamp: i64, offset_minutes: i16) -> Self {
        InternalDate {
            timestamp,
            offset_minutes,
        }
    }

    /// Parses `17-Jul-1996 02:44:25 -0700` (the day may be space-padded or one digit).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (date, rest) = s.split_once(' ')?;
        let (time, zone) = rest.trim_start().split_once(' ')?;
        let mut d = date.split('-');
        let day: u32 = d.next()?.trim().parse().ok()?;
        let month_name = d.next()?;
        let month = MONTHS
            .iter()
            .position(|m| m.eq_ignore_ascii_case(month_name))? as u32
            + 1;
        // `date-year = 4DIGIT` (RFC 3501): a longer one would overflow the day count.
        let year = d.next()?;
        if year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year: i64 = year.parse().ok()?;
        if d.next().is_some() || !(1..=31).contains(&day) {
            return None;
        }
        let mut t = time.split(':');
        let h: i64 = t.next()?.parse().ok()?;
        let m: i64 = t.next()?.parse().ok()?;
        let sec: i64 = t.next()?.parse().ok()?;
        if t.next().is_some() || h > 23 || m > 59 || sec > 60 {
            return None;
        }
        let zone = zone.trim();
        let (sign, digits) = match zone.as_bytes().first()? {
            b'+' => (1, &zone[1..]),
            b'-' => (-1, &zone[1..]),
            _ => return None,
        };
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let zh: i64 = digits[..2].parse().ok()?;
        let zm: i64 = digits[2..].parse().ok()?;
        let offset = sign * (zh * 60 + zm);
        let local = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec;
        Some(InternalDate {
            timestamp: local - offset * 60,
            offset_minutes: offset as i16,
        })
    }
}

impl fmt::Display for InternalDate {
    /// `17-Jul-1996 02:44:25 -0700` (the `date-time` of APPEND, without the quotes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let local = self.timestamp + i64::from(self.offset_minutes) * 60;
        let days = local.div_euclid(86_400);
        let secs = local.rem_euclid(86_400);
        let (y, mo, d) = civil_from_days(days);
        let off = i32::from(self.offset_minutes);
        let sign = if off < 0 { '-' } else { '+' };
        let off = off.abs();
        write!(
            f,
            "{d:02}-{}-{y:04} {:02}:{:02}:{:02} {sign}{:02}{:02}",
            MONTHS[(mo - 1) as usize],
            secs / 3600,
            secs % 3600 / 60,
            secs % 60,
            off / 60,
            off % 60
        )
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A folder name in IMAP's modified UTF-7 (RFC 3501 §5.1.3): printable ASCII as it is
/// (`&` as `&-`), everything else as `&…-` around modified base64 of UTF-16.
pub fn encode_mailbox_name(name: &str) -> String {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::IMAP_MUTF7,
        base64::engine::general_purpose::NO_PAD,
    );
    let mut out = String::with_capacity(name.len());
    let mut wide: Vec<u8> = Vec::new();
    let flush = |wide: &mut Vec<u8>, out: &mut String| {
        if !wide.is_empty() {
            out.push('&');
            out.push_str(&engine.encode(&wide));
            out.push('-');
            wide.clear();
        }
    };
    for ch in name.chars() {
        if (' '..='~').contains(&ch) {
            flush(&mut wide, &mut out);
            if ch == '&' {
                out.push_str("&-");
            } else {
                out.push(ch);
            }
        } else {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                wide.extend_from_slice(&unit.to_be_bytes());
            }
        }
    }
    flush(&mut wide, &mut out);
    out
}

/// A token of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok<'a> {
    Open,
    Close,
    /// An atom, including bracketed parts such as `BODY[HEADER.FIELDS (FROM)]<0>`,
    /// flags such as `\Seen`, numbers and `NIL`.
    Atom(&'a [u8]),
    Quoted(Vec<u8>),
    /// The index of a literal in [`RawResponse::literals`].
    Literal(usize),
}

/// Walks the pieces of a [`RawResponse`].
struct Cursor<'a> {
    pieces: &'a [Vec<u8>],
    piece: usize,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(pieces: &'a [Vec<u8>], pos: usize) -> Self {
        Cursor {
            pieces,
            piece: 0,
            pos,
        }
    }

    fn current(&self) -> &'a [u8] {
        &self.pieces[self.piece]
    }

    fn skip_spaces(&mut self) {
        let cur = self.current();
        while self.pos < cur.len() && cur[self.pos] == b' ' {
            self.pos += 1;
        }
    }

    /// The rest of the current piece (after spaces).
    fn rest(&mut self) -> &'a [u8] {
        self.skip_spaces();
        &self.current()[self.pos..]
    }

    fn at_end(&mut self) -> bool {
        self.skip_spaces();
        self.pos >= self.current().len() && self.piece + 1 >= self.pieces.len()
    }

    fn next(&mut self) -> Result<Tok<'a>, String> {
        self.skip_spaces();
        let cur = self.current();
        let Some(&b) = cur.get(self.pos) else {
            return Err("unexpected end of response".into());
        };
        match b {
            b'(' => {
                self.pos += 1;
                Ok(Tok::Open)
            }
            b')' => {
                self.pos += 1;
                Ok(Tok::Close)
            }
            b'"' => {
                let mut out = Vec::new();
                let mut i = self.pos + 1;
                loop {
                    match cur.get(i) {
                        None => return Err("unterminated quoted string".into()),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            match cur.get(i + 1) {
                                Some(&c) => out.push(c),
                                None => return Err("unterminated quoted string".into()),
                            }
                            i += 2;
                        }
                        Some(&c) => {
                            out.push(c);
                            i += 1;
                        }
                    }
                }
                self.pos = i + 1;
                Ok(Tok::Quoted(out))
            }
            b'{' | b'~' => {
                // A literal (or literal8) announced at the end of this piece.
                let start = if b == b'~' { self.pos + 1 } else { self.pos };
                let tail = &cur[start..];
                let is_announcement = tail.first() == Some(&b'{')
                    && tail.last() == Some(&b'}')
                    && tail[1..tail.len() - 1]
                        .iter()
                        .all(|c| c.is_ascii_digit() || *c == b'+');
                if !is_announcement || self.piece + 1 >= self.pieces.len() {
                    return Err("malformed literal".into());
                }
                let index = self.piece;
                self.piece += 1;
                self.pos = 0;
                Ok(Tok::Literal(index))
            }
            _ => {
                let start = self.pos;
                let mut i = self.pos;
                while i < cur.len() {
                    match cur[i] {
                        b' ' | b'(' | b')' => break,
                        b'[' => {
                            // Section specs may hold spaces and parentheses.
                            match cur[i..].iter().position(|&c| c == b']') {
                                Some(close) => i += close + 1,
                                None => return Err("unterminated [".into()),
                            }
                        }
                        _ => i += 1,
                    }
                }
                self.pos = i;
                Ok(Tok::Atom(&cur[start..i]))
            }
        }
    }

    fn number<T: std::str::FromStr>(&mut self) -> Result<T, String> {
        match self.next()? {
            Tok::Atom(a) => std::str::from_utf8(a)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("expected a number, got {}", String::from_utf8_lossy(a))),
            other => Err(format!("expected a number, got {other:?}")),
        }
    }

    /// Skips one value (an atom, string, literal or a parenthesized list of values).
    fn skip_value(&mut self) -> Result<(), String> {
        let mut depth = 0usize;
        loop {
            match self.next()? {
                Tok::Open => depth += 1,
                Tok::Close => {
                    if depth == 0 {
                        return Err("unbalanced )".into());
                    }
                    depth -= 1;
                }
                _ => {}
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }

    /// A parenthesized list of atoms (`FLAGS (\Seen $Label)`).
    fn atom_list(&mut self) -> Result<Vec<String>, String> {
        match self.next()? {
            Tok::Open => {}
            Tok::Atom(a) if a.eq_ignore_ascii_case(b"NIL") => return Ok(Vec::new()),
            other => return Err(format!("expected a list, got {other:?}")),
        }
        let mut out = Vec::new();
        loop {
            match self.next()? {
                Tok::Close => return Ok(out),
                Tok::Atom(a) => out.push(String::from_utf8_lossy(a).into_owned()),
                Tok::Quoted(q) => out.push(String::from_utf8_lossy(&q).into_owned()),
                other => return Err(format!("unexpected {other:?} in a list")),
            }
        }
    }
}

/// A string value: NIL, quoted or literal (by index).
#[derive(Debug, Clone, PartialEq, Eq)]
enum NString {
    Nil,
    Bytes(Vec<u8>),
    Literal(usize),
}

fn nstring(tok: Tok<'_>) -> Result<NString, String> {
    match tok {
        Tok::Atom(a) if a.eq_ignore_ascii_case(b"NIL") => Ok(NString::Nil),
        Tok::Quoted(q) => Ok(NString::Bytes(q)),
        Tok::Literal(i) => Ok(NString::Literal(i)),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

/// A body section of a FETCH response: `BODY[]<0>`, `BODY[HEADER]`, `RFC822`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSection {
    /// The section name upper-cased, without the origin: `BODY[]`, `BODY[HEADER]`.
    pub name: String,
    /// The `<origin>` of a partial fetch.
    pub origin: Option<u64>,
    /// `None` for NIL.
    pub data: Option<Vec<u8>>,
    /// The length the server announced (more than `data.len()` when the reader cut it).
    pub announced: u64,
}

/// The data items of one FETCH response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchData {
    pub uid: Option<u32>,
    pub size: Option<u64>,
    pub internal_date: Option<InternalDate>,
    /// The raw INTERNALDATE when it could not be parsed.
    pub internal_date_raw: Option<String>,
    pub flags: Option<Vec<String>>,
    pub modseq: Option<u64>,
    pub sections: Vec<FetchSection>,
}

impl FetchData {
    /// Takes the section called `name` (e.g. `BODY[]`).
    pub fn take_section(&mut self, name: &str) -> Option<FetchSection> {
        let i = self.sections.iter().position(|s| s.name == name)?;
        Some(self.sections.swap_remove(i))
    }
}

/// A LIST (or LSUB) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub flags: Vec<String>,
    pub delimiter: Option<String>,
    /// The name as sent (modified UTF-7 unless UTF8=ACCEPT is enabled).
    pub name: String,
}

impl ListEntry {
    /// Whether the name can be selected (`\Noselect` / `\NonExistent` say no).
    pub fn selectable(&self) -> bool {
        !self.flags.iter().any(|f| {
            f.eq_ignore_ascii_case("\\Noselect") || f.eq_ignore_ascii_case("\\NonExistent")
        })
    }
}

/// A response classified for synchronization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Tagged {
        tag: String,
        status: StatusResponse,
    },
    Continuation(String),
    /// Untagged `OK`/`NO`/`BAD`/`BYE`/`PREAUTH`.
    Status(StatusResponse),
    Capability(Vec<String>),
    Exists(u32),
    Expunge(u32),
    Recent(u32),
    Fetch {
        seq: u32,
        data: Box<FetchData>,
    },
    Vanished {
        earlier: bool,
        uids: UidSet,
    },
    Search {
        uids: Vec<u32>,
        modseq: Option<u64>,
    },
    Enabled(Vec<String>),
    List(ListEntry),
    /// Anything else (`FLAGS (…)`, `STATUS …`, …), as text.
    Other(String),
}

/// Classifies one response. Literals are moved out of `raw` into the result.
pub fn parse_response(mut raw: RawResponse) -> Result<Response, String> {
    let first = raw.pieces.first().map(Vec::as_slice).unwrap_or_default();
    if let Some(rest) = first.strip_prefix(b"* ") {
        let word_end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let word = &rest[..word_end];
        if !word.is_empty() && word.iter().all(u8::is_ascii_digit) {
            let n: u32 = std::str::from_utf8(word)
                .ok()
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| "number too large".to_string())?;
            let after = &rest[(word_end + 1).min(rest.len())..];
            let kw_end = after.iter().position(|&b| b == b' ').unwrap_or(after.len());
            let kw = &after[..kw_end];
            if kw.eq_ignore_ascii_case(b"FETCH") {
                let pos = 2 + word_end + 1 + kw_end;
                let data = parse_fetch(&mut raw, pos)?;
                return Ok(Response::Fetch {
                    seq: n,
                    data: Box::new(data),
                });
            }
            if kw.eq_ignore_ascii_case(b"EXISTS") {
                return Ok(Response::Exists(n));
            }
            if kw.eq_ignore_ascii_case(b"EXPUNGE") {
                return Ok(Response::Expunge(n));
            }
            if kw.eq_ignore_ascii_case(b"RECENT") {
                return Ok(Response::Recent(n));
            }
            return Ok(Response::Other(
                String::from_utf8_lossy(&raw.lossy_text()[2..]).into_owned(),
            ));
        }
        let pos = 2 + word_end;
        if word.eq_ignore_ascii_case(b"VANISHED") {
            return parse_vanished(&raw, pos);
        }
        if word.eq_ignore_ascii_case(b"SEARCH") {
            return parse_search(&raw, pos);
        }
        if word.eq_ignore_ascii_case(b"ENABLED") {
            let text = String::from_utf8_lossy(&first[pos..]).into_owned();
            return Ok(Response::Enabled(
                text.split_ascii_whitespace().map(str::to_string).collect(),
            ));
        }
        if word.eq_ignore_ascii_case(b"LIST") || word.eq_ignore_ascii_case(b"LSUB") {
            return parse_list(&raw, pos);
        }
    }
    let text = raw.lossy_text();
    Ok(match parse_line(&text)? {
        ResponseLine::Tagged { tag, status } => Response::Tagged { tag, status },
        ResponseLine::Continuation(c) => Response::Continuation(c),
        ResponseLine::Untagged(Untagged::Status(st)) => Response::Status(st),
        ResponseLine::Untagged(Untagged::Capability(c)) => Response::Capability(c),
        ResponseLine::Untagged(Untagged::Data(d)) => Response::Other(d),
    })
}

fn parse_fetch(raw: &mut RawResponse, pos: usize) -> Result<FetchData, String> {
    let mut data = FetchData::default();
    let mut bodies: Vec<(String, Option<u64>, NString)> = Vec::new();
    {
        let mut c = Cursor::new(&raw.pieces, pos);
        if c.next()? != Tok::Open {
            return Err("FETCH without (".into());
        }
        loop {
            let name = match c.next()? {
                Tok::Close => break,
                Tok::Atom(a) => a.to_ascii_uppercase(),
                other => return Err(format!("unexpected {other:?} in FETCH")),
            };
            match name.as_slice() {
                b"UID" => data.uid = Some(c.number()?),
                b"RFC822.SIZE" => data.size = Some(c.number()?),
                b"INTERNALDATE" => {
                    let text = match nstring(c.next()?)? {
                        NString::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
                        NString::Literal(i) => {
                            String::from_utf8_lossy(&raw.literals[i].data).into_owned()
                        }
                        NString::Nil => String::new(),
                    };
                    data.internal_date = InternalDate::parse(&text);
                    if data.internal_date.is_none() {
                        data.internal_date_raw = Some(text);
                    }
                }
                b"FLAGS" => data.flags = Some(c.atom_list()?),
                b"MODSEQ" => {
                    if c.next()? != Tok::Open {
                        return Err("MODSEQ without (".into());
                    }
                    data.modseq = Some(c.number()?);
                    if c.next()? != Tok::Close {
                        return Err("MODSEQ without )".into());
                    }
                }
                n if n.starts_with(b"BODY[")
                    || n.starts_with(b"BINARY[")
                    || n == b"RFC822"
                    || n == b"RFC822.HEADER"
                    || n == b"RFC822.TEXT" =>
                {
                    let (section, origin) = match n.iter().rposition(|&b| b == b'<') {
                        Some(lt) if n.ends_with(b">") && n[..lt].ends_with(b"]") => {
                            let origin = std::str::from_utf8(&n[lt + 1..n.len() - 1])
                                .ok()
                                .and_then(|s| s.parse().ok());
                            (&n[..lt], origin)
                        }
                        _ => (n, None),
                    };
                    let value = nstring(c.next()?)?;
                    bodies.push((String::from_utf8_lossy(section).into_owned(), origin, value));
                }
                _ => c.skip_value()?,
            }
        }
        if !c.at_end() {
            return Err(format!(
                "unexpected text after FETCH data: {}",
                shorten(&String::from_utf8_lossy(c.rest()), 60)
            ));
        }
    }
    for (name, origin, value) in bodies {
        let (data_bytes, announced) = match value {
            NString::Nil => (None, 0),
            NString::Bytes(b) => {
                let n = b.len() as u64;
                (Some(b), n)
            }
            NString::Literal(i) => {
                let lit = std::mem::take(&mut raw.literals[i]);
                (Some(lit.data), lit.announced)
            }
        };
        data.sections.push(FetchSection {
            name,
            origin,
            data: data_bytes,
            announced,
        });
    }
    Ok(data)
}

/// `* VANISHED (EARLIER) 41,43:116`.
fn parse_vanished(raw: &RawResponse, pos: usize) -> Result<Response, String> {
    let text = String::from_utf8_lossy(&raw.pieces[0][pos..]).into_owned();
    let text = text.trim();
    let (earlier, set) = match text.strip_prefix('(') {
        Some(rest) => {
            let (inner, after) = rest.split_once(')').ok_or("VANISHED without )")?;
            (inner.trim().eq_ignore_ascii_case("EARLIER"), after.trim())
        }
        None => (false, text),
    };
    let uids = UidSet::parse(set).ok_or_else(|| format!("bad VANISHED set {set:?}"))?;
    Ok(Response::Vanished { earlier, uids })
}

/// `* SEARCH 2 84 882` or, with CONDSTORE, `* SEARCH 2 84 (MODSEQ 917162500)`.
fn parse_search(raw: &RawResponse, pos: usize) -> Result<Response, String> {
    let text = String::from_utf8_lossy(&raw.pieces[0][pos..]).into_owned();
    let (nums, modseq) = match text.split_once('(') {
        Some((nums, tail)) => {
            let inner = tail.trim_end().trim_end_matches(')');
            let mut words = inner.split_ascii_whitespace();
            let modseq = match (words.next(), words.next()) {
                (Some(k), Some(v)) if k.eq_ignore_ascii_case("MODSEQ") => v.parse().ok(),
                _ => None,
            };
            (nums.to_string(), modseq)
        }
        None => (text, None),
    };
    let uids = nums
        .split_ascii_whitespace()
        .map(|w| {
            w.parse::<u32>()
                .map_err(|_| format!("bad SEARCH number {w:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Response::Search { uids, modseq })
}

/// `* LIST (\HasNoChildren) "/" "Undeliverable"`.
fn parse_list(raw: &RawResponse, pos: usize) -> Result<Response, String> {
    let mut c = Cursor::new(&raw.pieces, pos);
    let flags = c.atom_list()?;
    let delimiter = match c.next()? {
        Tok::Quoted(q) => Some(String::from_utf8_lossy(&q).into_owned()),
        Tok::Atom(a) if a.eq_ignore_ascii_case(b"NIL") => None,
        other => return Err(format!("bad LIST delimiter {other:?}")),
    };
    let name = match c.next()? {
        Tok::Atom(a) => String::from_utf8_lossy(a).into_owned(),
        Tok::Quoted(q) => String::from_utf8_lossy(&q).into_owned(),
        Tok::Literal(i) => String::from_utf8_lossy(&raw.literals[i].data).into_owned(),
        other => return Err(format!("bad LIST name {other:?}")),
    };
    Ok(Response::List(ListEntry {
        flags,
        delimiter,
        name,
    }))
}

/// A response code's UID sets: `[COPYUID 38505 304,319:320 3956:3958]`.
pub fn parse_copyuid(args: &str) -> Option<(u32, UidSet, UidSet)> {
    let mut w = args.split_ascii_whitespace();
    let validity = w.next()?.parse().ok()?;
    let source = UidSet::parse(w.next()?)?;
    let dest = UidSet::parse(w.next()?)?;
    Some((validity, source, dest))
}

/// `[APPENDUID 38505 3955]` (a MULTIAPPEND may report a set; the first UID is taken).
pub fn parse_appenduid(args: &str) -> Option<(u32, UidSet)> {
    let mut w = args.split_ascii_whitespace();
    let validity = w.next()?.parse().ok()?;
    let uids = UidSet::parse(w.next()?)?;
    Some((validity, uids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pieces: &[&[u8]], literals: &[&[u8]]) -> RawResponse {
        RawResponse {
            pieces: pieces.iter().map(|p| p.to_vec()).collect(),
            literals: literals
                .iter()
                .map(|l| Literal {
                    data: l.to_vec(),
                    announced: l.len() as u64,
                })
                .collect(),
        }
    }

    #[test]
    fn uid_sets() {
        let s = UidSet::from_uids(&[5, 1, 2, 3, 9, 3, 10, 12]);
        assert_eq!(s.to_string(), "1:3,5,9:10,12");
        assert_eq!(s.len(), 7);
        assert!(s.contains(10) && !s.contains(4) && !s.contains(13));
        let p = UidSet::parse("41,43:116,44,3:1").unwrap();
        assert_eq!(p.to_string(), "1:3,41,43:116");
        assert_eq!(p.len(), 3 + 1 + 74);
        assert!(UidSet::parse("1:*").is_none());
        assert!(UidSet::parse("0").is_none());
        let chunks = UidSet::parse("1:250,300").unwrap().chunks(100);
        let shown: Vec<String> = chunks.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["1:100", "101:200", "201:250,300"]);
        let chunks = UidSet::parse("1:100").unwrap().chunks(100);
        assert_eq!(chunks.len(), 1);
        let mut a = UidSet::parse("1:3").unwrap();
        a.extend(&UidSet::parse("4,8").unwrap());
        assert_eq!(a.to_string(), "1:4,8");
        assert_eq!(a.iter().collect::<Vec<_>>(), [1, 2, 3, 4, 8]);
        assert_eq!(
            UidSet::from_uids(&[u32::MAX, u32::MAX - 1]).to_string(),
            "4294967294:4294967295"
        );
    }

    #[test]
    fn internal_dates() {
        let d = InternalDate::parse("17-Jul-1996 02:44:25 -0700").unwrap();
        assert_eq!(d.timestamp, 837_596_665);
        assert_eq!(d.offset_minutes, -420);
        assert_eq!(d.to_string(), "17-Jul-1996 02:44:25 -0700");
        let d = InternalDate::parse(" 1-Jan-2000 00:00:00 +0000").unwrap();
        assert_eq!(d.timestamp, 946_684_800);
        assert_eq!(d.to_string(), "01-Jan-2000 00:00:00 +0000");
        let d = InternalDate::parse("29-Feb-2024 23:59:59 +0530").unwrap();
        assert_eq!(d.timestamp, 1_709_251_199 - 330 * 60);
        assert_eq!(d.to_string(), "29-Feb-2024 23:59:59 +0530");
        for bad in [
            "",
            "17-Jul-1996",
            "17-Foo-1996 02:44:25 -0700",
            "17-Jul-1996 02:44:25 0700",
            "32-Jul-1996 02:44:25 +0000",
            // Found by the fuzz target imap_response: the day count overflowed.
            " 1-Jan-2022222222222222200 00:00:00 +0000",
            "01-Jan-+999 00:00:00 +0000",
            "01-Jan-99999 00:00:00 +0000",
        ] {
            assert!(InternalDate::parse(bad).is_none(), "{bad}");
        }
        let before_epoch = InternalDate::from_timestamp(-86_400, 60);
        assert_eq!(before_epoch.to_string(), "31-Dec-1969 01:00:00 +0100");
    }

    #[test]
    fn modified_utf7() {
        assert_eq!(encode_mailbox_name("INBOX"), "INBOX");
        assert_eq!(encode_mailbox_name("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(encode_mailbox_name("A&B"), "A&-B");
        assert_eq!(encode_mailbox_name("日本語"), "&ZeVnLIqe-");
        assert_eq!(
            encode_mailbox_name("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(encode_mailbox_name("😀"), "&2D3eAA-");
    }

    #[test]
    fn fetch_with_body_literal() {
        let body: &[u8] = b"Subject: x\r\n\r\n\x00\xff\xfe(){}\r\n";
        let r = raw(
            &[
                b"* 12 FETCH (UID 7 RFC822.SIZE 44 INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" FLAGS (\\Seen $Label) MODSEQ (12345) BODY[]<0> {24}",
                b")",
            ],
            &[body],
        );
        let Response::Fetch { seq, mut data } = parse_response(r).unwrap() else {
            panic!()
        };
        assert_eq!(seq, 12);
        assert_eq!(data.uid, Some(7));
        assert_eq!(data.size, Some(44));
        assert_eq!(data.modseq, Some(12345));
        assert_eq!(
            data.flags.as_deref(),
            Some(&["\\Seen".to_string(), "$Label".to_string()][..])
        );
        assert_eq!(data.internal_date.unwrap().timestamp, 837_596_665);
        let s = data.take_section("BODY[]").unwrap();
        assert_eq!(s.origin, Some(0));
        assert_eq!(s.data.as_deref(), Some(body));
    }

    #[test]
    fn fetch_with_several_sections_and_skipped_items() {
        let r = raw(
            &[
                b"* 3 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)] {6}",
                b" UID 9 ENVELOPE (NIL \"s\" ((\"a\" NIL \"b\" \"c\")) NIL) BODY[HEADER] {3}",
                b" BODY[TEXT] NIL BODY[1] \"q\\\"x\")",
            ],
            &[b"abcdef", b"h\r\n"],
        );
        let Response::Fetch { mut data, .. } = parse_response(r).unwrap() else {
            panic!()
        };
        assert_eq!(data.uid, Some(9));
        assert_eq!(
            data.take_section("BODY[HEADER.FIELDS (MESSAGE-ID)]")
                .unwrap()
                .data
                .unwrap(),
            b"abcdef"
        );
        assert_eq!(
            data.take_section("BODY[HEADER]").unwrap().data.unwrap(),
            b"h\r\n"
        );
        assert_eq!(data.take_section("BODY[TEXT]").unwrap().data, None);
        assert_eq!(data.take_section("BODY[1]").unwrap().data.unwrap(), b"q\"x");
    }

    #[test]
    fn fetch_flags_only_and_garbage() {
        let Response::Fetch { seq, data } =
            parse_response(RawResponse::line("* 4 FETCH (FLAGS (\\Deleted) UID 44)")).unwrap()
        else {
            panic!()
        };
        assert_eq!((seq, data.uid), (4, Some(44)));
        assert!(data.sections.is_empty() && data.size.is_none());
        for bad in [
            "* 4 FETCH UID 4",
            "* 4 FETCH (UID x)",
            "* 4 FETCH (UID 4",
            "* 4 FETCH (UID 4) trailing",
            "* 4 FETCH (BODY[] {3})",
        ] {
            assert!(parse_response(RawResponse::line(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_responses() {
        let p = |s: &str| parse_response(RawResponse::line(s)).unwrap();
        assert_eq!(p("* 23 EXISTS"), Response::Exists(23));
        assert_eq!(p("* 5 expunge"), Response::Expunge(5));
        assert_eq!(p("* 0 RECENT"), Response::Recent(0));
        assert_eq!(
            p("* VANISHED (EARLIER) 41,43:116"),
            Response::Vanished {
                earlier: true,
                uids: UidSet::parse("41,43:116").unwrap()
            }
        );
        assert_eq!(
            p("* VANISHED 7"),
            Response::Vanished {
                earlier: false,
                uids: UidSet::parse("7").unwrap()
            }
        );
        assert_eq!(
            p("* SEARCH 2 84 882"),
            Response::Search {
                uids: vec![2, 84, 882],
                modseq: None
            }
        );
        assert_eq!(
            p("* SEARCH"),
            Response::Search {
                uids: vec![],
                modseq: None
            }
        );
        assert_eq!(
            p("* SEARCH 2 5 (MODSEQ 917162500)"),
            Response::Search {
                uids: vec![2, 5],
                modseq: Some(917_162_500)
            }
        );
        assert_eq!(
            p("* ENABLED CONDSTORE QRESYNC"),
            Response::Enabled(vec!["CONDSTORE".into(), "QRESYNC".into()])
        );
        let Response::List(entry) =
            p("* LIST (\\HasNoChildren \\Noselect) \"/\" \"Un deliverable\"")
        else {
            panic!()
        };
        assert_eq!(entry.name, "Un deliverable");
        assert_eq!(entry.delimiter.as_deref(), Some("/"));
        assert!(!entry.selectable());
        let Response::List(entry) = p("* LIST () NIL INBOX") else {
            panic!()
        };
        assert!(entry.selectable() && entry.delimiter.is_none());
        assert!(matches!(
            p("A0001 OK [READ-WRITE] done"),
            Response::Tagged { .. }
        ));
        assert!(matches!(p("+ idling"), Response::Continuation(_)));
        assert!(matches!(p("* BYE shutting down"), Response::Status(_)));
        assert_eq!(
            p("* FLAGS (\\Seen)"),
            Response::Other("FLAGS (\\Seen)".into())
        );
    }

    #[test]
    fn response_codes_with_sets() {
        let (v, s, d) = parse_copyuid("38505 304,319:320 3956:3958").unwrap();
        assert_eq!(v, 38505);
        assert_eq!(s.iter().collect::<Vec<_>>(), [304, 319, 320]);
        assert_eq!(d.iter().collect::<Vec<_>>(), [3956, 3957, 3958]);
        let (v, u) = parse_appenduid("38505 3955").unwrap();
        assert_eq!((v, u.iter().next()), (38505, Some(3955)));
        assert!(parse_appenduid("x 1").is_none());
    }
}

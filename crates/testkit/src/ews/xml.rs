//! A small namespace-agnostic element tree read with quick-xml, and helpers to write XML.
//!
//! Requests are matched by local name (`m:GetItem` and `GetItem` in any prefix are the same),
//! as the schemas leave no two elements of one parent with the same local name.

use quick_xml::XmlVersion;
use quick_xml::events::Event;
use quick_xml::reader::Reader;

/// Deepest nesting a request may have (a hostile body cannot exhaust the stack).
const MAX_DEPTH: usize = 100;
/// Most elements a request may have.
const MAX_ELEMENTS: usize = 200_000;

/// One element: its local name, attributes by local name, text content and children.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// Local name (no prefix).
    pub name: String,
    /// Attributes as (local name, unescaped value).
    pub attrs: Vec<(String, String)>,
    /// Concatenated unescaped text directly in this element.
    pub text: String,
    /// Child elements in document order.
    pub children: Vec<Node>,
    /// 1-based line of the start tag (for ErrorSchemaValidation's LineNumber).
    pub line: usize,
}

/// Why a document could not be read (a SOAP fault answers it).
#[derive(Debug, Clone)]
pub struct ParseError {
    /// What went wrong, as an XmlReader would say.
    pub message: String,
    /// 1-based line where reading stopped.
    pub line: usize,
}

fn local(name: &str) -> String {
    match name.rsplit_once(':') {
        Some((_, l)) => l.to_string(),
        None => name.to_string(),
    }
}

fn line_of(input: &[u8], pos: u64) -> usize {
    let end = usize::try_from(pos).unwrap_or(input.len()).min(input.len());
    input[..end].iter().filter(|b| **b == b'\n').count() + 1
}

/// Parses a whole document into its root element.
pub fn parse(input: &[u8]) -> Result<Node, ParseError> {
    let mut reader = Reader::from_reader(input);
    reader.config_mut().trim_text(false);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut count = 0usize;
    let mut buf = Vec::new();
    let err = |reader: &Reader<&[u8]>, message: String| ParseError {
        message,
        line: line_of(input, reader.buffer_position()),
    };
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| err(&reader, e.to_string()))?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                count += 1;
                if count > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return Err(err(
                        &reader,
                        "document too large or too deeply nested".into(),
                    ));
                }
                let mut node = Node {
                    name: local(e.name().as_ref()),
                    line: line_of(input, reader.buffer_position()),
                    ..Node::default()
                };
                for a in e.attributes() {
                    let a = a.map_err(|e| err(&reader, e.to_string()))?;
                    let key: &str = a.key.as_ref();
                    if key == "xmlns" || key.starts_with("xmlns:") {
                        continue;
                    }
                    let value = a
                        .normalized_value(XmlVersion::default())
                        .map_err(|e| err(&reader, e.to_string()))?
                        .into_owned();
                    node.attrs.push((local(key), value));
                }
                if matches!(event, Event::Empty(_)) {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None if root.is_none() => root = Some(node),
                        None => return Err(err(&reader, "more than one root element".into())),
                    }
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| err(&reader, "unexpected end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None if root.is_none() => root = Some(node),
                    None => return Err(err(&reader, "more than one root element".into())),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                } else if !t.chars().all(char::is_whitespace) {
                    return Err(err(&reader, "text outside the root element".into()));
                }
            }
            Event::GeneralRef(r) => {
                if let Some(top) = stack.last_mut() {
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => c,
                        Ok(None) => match &*r {
                            "lt" => '<',
                            "gt" => '>',
                            "amp" => '&',
                            "apos" => '\'',
                            "quot" => '"',
                            other => {
                                return Err(err(
                                    &reader,
                                    format!("reference to undeclared entity '{other}'"),
                                ));
                            }
                        },
                        Err(e) => return Err(err(&reader, e.to_string())),
                    };
                    top.text.push(resolved);
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&c.xml10_content());
                }
            }
            Event::DocType(_) => {
                return Err(err(
                    &reader,
                    "DTD is prohibited in this XML document".into(),
                ));
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(err(&reader, "unexpected end of file".into()));
    }
    root.ok_or_else(|| err(&reader, "root element is missing".into()))
}

impl Node {
    /// The first child with this local name.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All children with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The child reached by following local names.
    pub fn path(&self, names: &[&str]) -> Option<&Node> {
        let mut n = self;
        for name in names {
            n = n.child(name)?;
        }
        Some(n)
    }

    /// An attribute by local name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Trimmed text of a child, if present.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }
}

/// Escapes text or a double-quoted attribute value (`&`, `<`, `>`, `"`; apostrophes stay, as
/// in Exchange's answers).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Writes `node` back as XML, every element in the EWS types namespace (prefix `t:`, declared
/// by the answer's envelope): how the double returns properties it stored as a client sent
/// them.
pub fn write(node: &Node) -> String {
    let mut out = format!("<t:{}", node.name);
    for (k, v) in &node.attrs {
        out.push_str(&format!(" {k}=\"{}\"", esc(v)));
    }
    if node.children.is_empty() && node.text.is_empty() {
        out.push_str("/>");
        return out;
    }
    out.push('>');
    if node.children.is_empty() {
        out.push_str(&esc(&node.text));
    }
    for c in &node.children {
        out.push_str(&write(c));
    }
    out.push_str(&format!("</t:{}>", node.name));
    out
}

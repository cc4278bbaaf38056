//! The little XML EWS needs: a bounded element tree for reading answers (by local name, so
//! the server's namespace prefixes do not matter) and escaping for writing requests.
//!
//! Answers come from a server and are hostile input: the tree refuses documents nested
//! deeper than [`MAX_DEPTH`] or with more than [`MAX_ELEMENTS`] elements, and DTDs (no
//! entity expansion). The body size is bounded by the HTTP layer before it gets here.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use std::borrow::Cow;

/// Deepest nesting accepted (EWS answers are about a dozen levels deep).
pub const MAX_DEPTH: usize = 64;
/// Most elements accepted in one answer (a page of 512 changes has a few thousand).
pub const MAX_ELEMENTS: usize = 500_000;

/// An element: its local name, attributes (local names), child elements and text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    /// The element's own character data (text and CDATA between its children, joined).
    pub text: String,
}

impl Element {
    /// Parses a whole document into its root element.
    pub fn parse(xml: &[u8]) -> Result<Element, String> {
        let text = std::str::from_utf8(xml).map_err(|e| format!("not UTF-8: {e}"))?;
        let mut reader = Reader::from_str(text);
        let mut stack: Vec<Element> = Vec::new();
        let mut count = 0usize;
        loop {
            let event = reader
                .read_event()
                .map_err(|e| format!("malformed XML at byte {}: {e}", reader.buffer_position()))?;
            match event {
                Event::Start(e) | Event::Empty(e) if stack.len() >= MAX_DEPTH => {
                    return Err(format!(
                        "element <{}> is nested deeper than {MAX_DEPTH} levels",
                        e.local_name().as_ref()
                    ));
                }
                Event::Start(e) => {
                    count += 1;
                    stack.push(start(&e)?);
                }
                Event::Empty(e) => {
                    count += 1;
                    let el = start(&e)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => return Ok(el),
                    }
                }
                Event::End(_) => {
                    let done = stack.pop().ok_or("an end tag without a start tag")?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => return Ok(done),
                    }
                }
                Event::Text(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&t.xml10_content());
                    }
                }
                Event::CData(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&t.into_inner());
                    }
                }
                Event::GeneralRef(r) => {
                    let ch = match r.resolve_char_ref() {
                        Ok(Some(c)) => c,
                        _ => match &*r {
                            "lt" => '<',
                            "gt" => '>',
                            "amp" => '&',
                            "apos" => '\'',
                            "quot" => '"',
                            other => return Err(format!("unknown entity &{other};")),
                        },
                    };
                    if let Some(top) = stack.last_mut() {
                        top.text.push(ch);
                    }
                }
                Event::DocType(_) => return Err("a DTD is not accepted".into()),
                Event::Eof => return Err("the document ends before its root element does".into()),
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            }
            if count > MAX_ELEMENTS {
                return Err(format!("more than {MAX_ELEMENTS} elements"));
            }
        }
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child named `name`.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The element at `path` (child names, in order) below this one.
    pub fn at(&self, path: &[&str]) -> Option<&Element> {
        path.iter().try_fold(self, |el, name| el.child(name))
    }

    /// The trimmed text of the child `name`.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// The first element named `name` at any depth (depth first), this one included.
    pub fn find(&self, name: &str) -> Option<&Element> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    /// The attribute `name` (local name).
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn start(e: &BytesStart<'_>) -> Result<Element, String> {
    let name = e.local_name().as_ref().to_owned();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| format!("bad attribute in <{name}>: {err}"))?;
        let key = a.key.local_name().as_ref().to_owned();
        let value = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|err| format!("bad attribute {key} in <{name}>: {err}"))?
            .into_owned();
        attrs.push((key, value));
    }
    Ok(Element {
        name,
        attrs,
        ..Default::default()
    })
}

/// `text` escaped for element content and attribute values.
pub fn escape(text: &str) -> Cow<'_, str> {
    quick_xml::escape::escape(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_by_local_name_with_entities_and_cdata() {
        let doc = br#"<?xml version="1.0"?><s:Envelope xmlns:s="x"><s:Body><m:R a:Id="7" xmlns:m="y" xmlns:a="z">a &amp; b&#x21;<![CDATA[<c>]]></m:R><t:E/></s:Body></s:Envelope>"#;
        let root = Element::parse(doc).unwrap();
        assert_eq!(root.name, "Envelope");
        let r = root.at(&["Body", "R"]).unwrap();
        assert_eq!(r.text, "a & b!<c>");
        assert_eq!(r.attr("Id"), Some("7"));
        assert!(root.find("E").is_some());
        assert_eq!(escape("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }

    #[test]
    fn refuses_hostile_documents_without_panicking() {
        let deep = "<a>".repeat(MAX_DEPTH + 1);
        assert!(
            Element::parse(deep.as_bytes())
                .unwrap_err()
                .contains("deeper")
        );
        assert!(
            Element::parse(b"<!DOCTYPE x [<!ENTITY e \"boom\">]><x>&e;</x>")
                .unwrap_err()
                .contains("DTD")
        );
        assert!(Element::parse(b"<a><b></a>").is_err());
        assert!(Element::parse(b"<a>").is_err());
        assert!(Element::parse(b"\xff\xfe").is_err());
        assert!(Element::parse(b"<a>&bogus;</a>").is_err());
        let doc = br#"<a x="1"><b>t&amp;</b><c/></a>"#;
        for n in 0..doc.len() {
            assert!(
                Element::parse(&doc[..n]).is_err(),
                "a document cut at {n} is refused"
            );
        }
        assert!(Element::parse(doc).is_ok());
    }
}

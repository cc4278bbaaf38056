//! Microsoft's OData CSDL description of Graph v1.0 (`shared/graph/v1.0-cleanMetadata.xml`),
//! read with quick-xml: entity and complex types with their properties and base types, enum
//! types, and bound actions and functions. Used to check that JSON the double sends carries
//! only declared properties with the right JSON kinds, and that operations exist.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result};
use quick_xml::XmlVersion;
use quick_xml::events::Event;
use quick_xml::reader::Reader;

#[derive(Debug, Default, Clone)]
struct TypeDef {
    /// Fully qualified name as declared (e.g. `microsoft.graph.message`).
    name: String,
    base: Option<String>,
    open: bool,
    /// Property (and navigation property) name → normalized type.
    props: HashMap<String, String>,
}

#[derive(Debug, Clone)]
struct Operation {
    name: String,
    binding: String,
    params: Vec<String>,
}

/// The parsed CSDL document.
#[derive(Debug, Default)]
pub struct Csdl {
    /// Lower-case qualified name → type.
    types: HashMap<String, TypeDef>,
    /// Lower-case qualified names of enum types.
    enums: HashSet<String>,
    operations: Vec<Operation>,
}

/// Deepest object nesting [`Csdl::check`] follows.
const MAX_DEPTH: usize = 32;

fn attr(e: &quick_xml::events::BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes().flatten().find_map(|a| {
        let key: &str = a.key.as_ref();
        (key == name).then(|| {
            a.normalized_value(XmlVersion::default())
                .map(|v| v.into_owned())
                .unwrap_or_default()
        })
    })
}

impl Csdl {
    /// Reads a CSDL (EDMX) file.
    pub fn load(path: &Path) -> Result<Csdl> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Csdl::parse(text.trim_start_matches('\u{feff}'))
            .with_context(|| format!("parsing {}", path.display()))
    }

    fn parse(text: &str) -> Result<Csdl> {
        let mut reader = Reader::from_str(text);
        let mut csdl = Csdl::default();
        // Alias → namespace of the schema being read and of all schemas.
        let mut aliases: HashMap<String, String> = HashMap::new();
        let mut namespace = String::new();
        let mut current_type: Option<TypeDef> = None;
        let mut current_op: Option<Operation> = None;
        let mut raw_types: Vec<TypeDef> = Vec::new();
        let mut raw_ops: Vec<Operation> = Vec::new();
        loop {
            let event = reader.read_event().context("reading the CSDL")?;
            let empty = matches!(event, Event::Empty(_));
            match event {
                Event::Start(ref e) | Event::Empty(ref e) => {
                    let qname = e.name();
                    let tag: &str = qname.as_ref();
                    let tag = tag.rsplit(':').next().unwrap_or(tag).to_string();
                    match tag.as_str() {
                        "Schema" => {
                            namespace = attr(e, "Namespace").unwrap_or_default();
                            if let Some(alias) = attr(e, "Alias") {
                                aliases.insert(alias, namespace.clone());
                            }
                        }
                        "EntityType" | "ComplexType" => {
                            let t = TypeDef {
                                name: format!(
                                    "{namespace}.{}",
                                    attr(e, "Name").unwrap_or_default()
                                ),
                                base: attr(e, "BaseType"),
                                open: attr(e, "OpenType").as_deref() == Some("true"),
                                props: HashMap::new(),
                            };
                            if empty {
                                raw_types.push(t);
                            } else {
                                current_type = Some(t);
                            }
                        }
                        "EnumType" => {
                            csdl.enums.insert(
                                format!("{namespace}.{}", attr(e, "Name").unwrap_or_default())
                                    .to_lowercase(),
                            );
                        }
                        "Property" | "NavigationProperty" => {
                            if let Some(t) = current_type.as_mut() {
                                t.props.insert(
                                    attr(e, "Name").unwrap_or_default(),
                                    attr(e, "Type").unwrap_or_default(),
                                );
                            }
                        }
                        "Action" | "Function" if attr(e, "IsBound").as_deref() == Some("true") => {
                            let op = Operation {
                                name: attr(e, "Name").unwrap_or_default(),
                                binding: String::new(),
                                params: Vec::new(),
                            };
                            if !empty {
                                current_op = Some(op);
                            }
                        }
                        "Parameter" => {
                            if let Some(op) = current_op.as_mut() {
                                let (name, ty) = (
                                    attr(e, "Name").unwrap_or_default(),
                                    attr(e, "Type").unwrap_or_default(),
                                );
                                if op.binding.is_empty() {
                                    op.binding = ty;
                                } else {
                                    op.params.push(name);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                Event::End(ref e) => {
                    let qname = e.name();
                    let tag: &str = qname.as_ref();
                    let tag = tag.rsplit(':').next().unwrap_or(tag);
                    match tag {
                        "EntityType" | "ComplexType" => {
                            if let Some(t) = current_type.take() {
                                raw_types.push(t);
                            }
                        }
                        "Action" | "Function" => {
                            if let Some(op) = current_op.take() {
                                raw_ops.push(op);
                            }
                        }
                        _ => {}
                    }
                }
                Event::Eof => break,
                _ => {}
            }
        }
        let norm = |t: &str| normalize(t, &aliases);
        for mut t in raw_types {
            t.base = t.base.as_deref().map(norm);
            for v in t.props.values_mut() {
                *v = norm(v);
            }
            csdl.types.insert(t.name.to_lowercase(), t);
        }
        for mut op in raw_ops {
            op.binding = norm(&op.binding);
            csdl.operations.push(op);
        }
        anyhow::ensure!(
            csdl.types.contains_key("microsoft.graph.entity"),
            "no microsoft.graph.entity type: not Graph's CSDL"
        );
        Ok(csdl)
    }

    fn qualify(&self, type_name: &str) -> String {
        let t = type_name.trim_start_matches('#');
        if let Some(inner) = t
            .strip_prefix("Collection(")
            .and_then(|r| r.strip_suffix(')'))
        {
            return format!("Collection({})", self.qualify(inner));
        }
        if t.starts_with("Edm.") {
            return t.to_string();
        }
        if t.contains('.') {
            if let Some(rest) = t.strip_prefix("graph.") {
                return format!("microsoft.graph.{rest}");
            }
            t.to_string()
        } else {
            format!("microsoft.graph.{t}")
        }
    }

    fn type_def(&self, type_name: &str) -> Option<&TypeDef> {
        self.types.get(&self.qualify(type_name).to_lowercase())
    }

    /// The declared type of `prop` on `type_name` (`"message"` or
    /// `"microsoft.graph.recipient"`), looking through base types: e.g. `Edm.String`,
    /// `microsoft.graph.recipient`, `Collection(microsoft.graph.recipient)`.
    pub fn property_type(&self, type_name: &str, prop: &str) -> Option<String> {
        let mut t = self.type_def(type_name);
        let mut hops = 0;
        while let Some(def) = t {
            if let Some(p) = def.props.get(prop) {
                return Some(p.clone());
            }
            hops += 1;
            if hops > MAX_DEPTH {
                return None;
            }
            t = def.base.as_deref().and_then(|b| self.type_def(b));
        }
        None
    }

    /// An open type that declares nothing (e.g. `resourceData`): any property goes. Open
    /// types that do declare properties (`message`, `user`, `event` are open in Graph's
    /// CSDL) are held to their declared properties: the double must send only those.
    fn is_open(&self, type_name: &str) -> bool {
        let mut t = self.type_def(type_name);
        let mut hops = 0;
        while let Some(def) = t {
            if def.open {
                return def.props.is_empty();
            }
            hops += 1;
            if hops > MAX_DEPTH {
                return false;
            }
            t = def.base.as_deref().and_then(|b| self.type_def(b));
        }
        false
    }

    /// Checks a JSON value against a type: every property must be declared (on the type or a
    /// base type; only open types that declare no properties at all, such as `resourceData`,
    /// take any), with the right JSON kind for Edm primitives,
    /// collections, complex and enum types, recursively. Annotations (`@odata.*`,
    /// `prop@odata.*`, `@removed`) are ignored; an `@odata.type` naming a derived type is
    /// followed. Returns the violations (empty: conforms).
    pub fn check(&self, type_name: &str, value: &serde_json::Value) -> Vec<String> {
        let mut out = Vec::new();
        let q = self.qualify(type_name);
        if self.type_def(&q).is_none() && !self.enums.contains(&q.to_lowercase()) {
            out.push(format!("{type_name}: no such type in the CSDL"));
            return out;
        }
        self.check_value(&q, value, &q, 0, &mut out);
        out
    }

    fn check_value(
        &self,
        ty: &str,
        v: &serde_json::Value,
        path: &str,
        depth: usize,
        out: &mut Vec<String>,
    ) {
        use serde_json::Value as J;
        if v.is_null() || depth > MAX_DEPTH {
            return;
        }
        if let Some(inner) = ty
            .strip_prefix("Collection(")
            .and_then(|r| r.strip_suffix(')'))
        {
            match v {
                J::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        self.check_value(inner, item, &format!("{path}[{i}]"), depth + 1, out);
                    }
                }
                _ => out.push(format!("{path}: expected an array for {ty}, got {v}")),
            }
            return;
        }
        let kind_ok = match ty {
            "Edm.String" | "Edm.DateTimeOffset" | "Edm.Date" | "Edm.TimeOfDay" | "Edm.Duration"
            | "Edm.Guid" | "Edm.Binary" => v.is_string(),
            "Edm.Boolean" => v.is_boolean(),
            "Edm.Int16" | "Edm.Int32" | "Edm.Int64" | "Edm.Byte" | "Edm.SByte" => {
                v.is_i64() || v.is_u64()
            }
            "Edm.Double" | "Edm.Single" | "Edm.Decimal" => v.is_number() || v.is_string(),
            t if t.starts_with("Edm.") => true,
            t if self.enums.contains(&t.to_lowercase()) => v.is_string(),
            _ => {
                let J::Object(map) = v else {
                    out.push(format!("{path}: expected an object of {ty}, got {v}"));
                    return;
                };
                // A derived type named by the payload.
                let actual = map
                    .get("@odata.type")
                    .and_then(|t| t.as_str())
                    .map(|t| self.qualify(t))
                    .filter(|t| self.type_def(t).is_some())
                    .unwrap_or_else(|| ty.to_string());
                if self.type_def(&actual).is_none() {
                    out.push(format!("{path}: no such type {actual} in the CSDL"));
                    return;
                }
                let open = self.is_open(&actual);
                for (k, val) in map {
                    if k.starts_with("@odata.") || k == "@removed" || k.contains("@odata.") {
                        continue;
                    }
                    match self.property_type(&actual, k) {
                        Some(pt) => {
                            self.check_value(&pt, val, &format!("{path}.{k}"), depth + 1, out)
                        }
                        None if open => {}
                        None => out.push(format!("{path}.{k}: not a property of {actual}")),
                    }
                }
                true
            }
        };
        if !kind_ok {
            out.push(format!("{path}: expected {ty}, got {v}"));
        }
    }

    /// The action or function `name` bound to `binding_type` (`"microsoft.graph.user"`,
    /// `"Collection(microsoft.graph.message)"`): its parameter names other than the binding
    /// parameter, or `None` if there is none.
    pub fn bound_operation(&self, name: &str, binding_type: &str) -> Option<Vec<String>> {
        let want = self.qualify(binding_type).to_lowercase();
        self.operations
            .iter()
            .find(|op| op.name == name && self.qualify(&op.binding).to_lowercase() == want)
            .map(|op| op.params.clone())
    }
}

/// Replaces a schema alias (`graph.`, `self.`) by its namespace, inside `Collection(..)` too.
fn normalize(t: &str, aliases: &HashMap<String, String>) -> String {
    if let Some(inner) = t
        .strip_prefix("Collection(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return format!("Collection({})", normalize(inner, aliases));
    }
    if let Some((prefix, rest)) = t.split_once('.')
        && let Some(ns) = aliases.get(prefix)
    {
        return format!("{ns}.{rest}");
    }
    t.to_string()
}

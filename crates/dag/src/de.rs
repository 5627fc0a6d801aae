//! A serde `Deserializer` over spanned YAML nodes.
//!
//! The raw spec types (`spec.rs`) derive `Deserialize`; reading them through this deserializer
//! turns every serde error into one that carries the position of the offending node and the name
//! of the field it belongs to, and turns "unknown field" into a "did you mean" hint.
//!
//! Scalars are resolved by what the target type asks for: a `String` field takes the source text
//! of any scalar (`start_date: 2025-01-01`), a `bool` field takes YAML 1.1 booleans as PyYAML
//! does (`yes`, `on`, `True`), and untyped values (`params`, `op_kwargs`) follow PyYAML's
//! resolution of plain scalars.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use crate::yaml::{Node, Scalar, Span, Value};

/// An error found while reading a node, with where it is and which field it concerns.
#[derive(Debug, Clone, PartialEq)]
pub struct DeError {
    pub span: Option<Span>,
    /// The field (map key) whose value was wrong, innermost first set.
    pub field: Option<String>,
    pub message: String,
}

impl DeError {
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        DeError {
            span: Some(span),
            field: None,
            message: message.into(),
        }
    }

    fn at(mut self, span: Span) -> Self {
        if self.span.is_none() {
            self.span = Some(span);
        }
        self
    }

    fn in_field(mut self, key: &str) -> Self {
        if self.field.is_none() {
            self.field = Some(key.to_owned());
        }
        self
    }

    /// The message as shown to users: "`field`: message".
    pub fn describe(&self) -> String {
        match &self.field {
            Some(f) => format!("`{f}`: {}", self.message),
            None => self.message.clone(),
        }
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            span: None,
            field: None,
            message: msg.to_string(),
        }
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            span: None,
            field: None,
            message: unknown_key_message(field, expected),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError {
            span: None,
            field: None,
            message: format!("missing required key `{field}`"),
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError {
            span: None,
            field: None,
            message: format!(
                "unknown value `{variant}`{}; expected one of: {}",
                did_you_mean(variant, expected.iter().copied())
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default(),
                expected.join(", ")
            ),
        }
    }
}

/// "unknown key `retires` (did you mean `retries`?)"
pub fn unknown_key_message(field: &str, expected: &[&str]) -> String {
    match did_you_mean(field, expected.iter().copied()) {
        Some(s) => format!("unknown key `{field}` (did you mean `{s}`?)"),
        None => format!("unknown key `{field}`"),
    }
}

/// " (did you mean `x`?)" when a candidate is close to `input`, else nothing: the tail of an
/// error message about an unknown name.
pub fn did_you_mean_hint<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(input, candidates)
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// The closest candidate by edit distance, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let max = (input.chars().count() / 3).max(1) + 1;
    candidates
        .into_iter()
        .map(|c| (levenshtein(input, c), c))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Reads a `T` from a node.
pub fn from_node<'de, T: de::Deserialize<'de>>(node: &Node) -> Result<T, DeError> {
    T::deserialize(NodeDe { node }).map_err(|e| e.at(node.span))
}

/// The name under which [`crate::spec::Raw`] asks for the node itself.
pub(crate) const RAW_NODE: &str = "$flow::RawNode";

thread_local! {
    // Hands a node to `Raw<T>`'s Deserialize impl; serde has no other channel for it.
    static RAW_SLOT: RefCell<Option<Node>> = const { RefCell::new(None) };
}

pub(crate) fn take_raw_node() -> Option<Node> {
    RAW_SLOT.with(|slot| slot.borrow_mut().take())
}

struct NodeDe<'a> {
    node: &'a Node,
}

/// How a plain scalar resolves when the target accepts anything (PyYAML's YAML 1.1 rules for
/// booleans, YAML 1.2 core rules for numbers).
pub(crate) enum Resolved<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

pub(crate) fn parse_int(text: &str) -> Option<i64> {
    let t = text.replace('_', "");
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(&t)),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()?
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<i64>().ok()?
    };
    Some(if neg { -value } else { value })
}

pub(crate) fn parse_float(text: &str) -> Option<f64> {
    match text {
        ".inf" | ".Inf" | ".INF" | "+.inf" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    let first = text.bytes().next()?;
    if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
        return None;
    }
    if !text.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<f64>().ok()
}

pub(crate) fn resolve(scalar: &Scalar) -> Resolved<'_> {
    if !scalar.plain {
        return Resolved::Str(&scalar.text);
    }
    if let Some(b) = parse_bool(&scalar.text) {
        return Resolved::Bool(b);
    }
    if let Some(i) = parse_int(&scalar.text) {
        return Resolved::Int(i);
    }
    if let Some(f) = parse_float(&scalar.text) {
        return Resolved::Float(f);
    }
    Resolved::Str(&scalar.text)
}

impl<'a> NodeDe<'a> {
    fn invalid(&self, expected: &str) -> DeError {
        let found = match &self.node.value {
            Value::Null => "nothing (null)".to_owned(),
            Value::Scalar(s) => format!("`{}`", truncate(&s.text, 60)),
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
        };
        DeError::new(
            self.node.span,
            format!("expected {expected}, found {found}"),
        )
    }

    fn scalar(&self) -> Option<&'a Scalar> {
        match &self.node.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    fn integer(&self, what: &str) -> Result<i64, DeError> {
        let Some(s) = self.scalar() else {
            return Err(self.invalid(what));
        };
        parse_int(s.text.trim()).ok_or_else(|| self.invalid(what))
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let cut: String = s.chars().take(max).collect();
    format!("{cut}...")
}

macro_rules! int_method {
    ($method:ident, $ty:ty, $visit:ident, $what:literal) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let value = self.integer($what)?;
            let narrowed = <$ty>::try_from(value).map_err(|_| {
                DeError::new(
                    self.node.span,
                    format!("{value} is out of range ({}..={})", <$ty>::MIN, <$ty>::MAX),
                )
            })?;
            visitor
                .$visit(narrowed)
                .map_err(|e: DeError| e.at(self.node.span))
        }
    };
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let span = self.node.span;
        let result = match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Scalar(s) => match resolve(s) {
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(i) => visitor.visit_i64(i),
                Resolved::Float(f) => visitor.visit_f64(f),
                Resolved::Str(t) => visitor.visit_str(t),
            },
            Value::Seq(items) => visitor.visit_seq(SeqAccess { iter: items.iter() }),
            Value::Map(entries) => visitor.visit_map(MapAccess {
                iter: entries.iter(),
                value: None,
            }),
        };
        result.map_err(|e| e.at(span))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let b = self
            .scalar()
            .and_then(|s| parse_bool(s.text.trim()))
            .ok_or_else(|| self.invalid("true or false"))?;
        visitor
            .visit_bool(b)
            .map_err(|e: DeError| e.at(self.node.span))
    }

    int_method!(deserialize_i8, i8, visit_i8, "an integer");
    int_method!(deserialize_i16, i16, visit_i16, "an integer");
    int_method!(deserialize_i32, i32, visit_i32, "an integer");
    int_method!(deserialize_i64, i64, visit_i64, "an integer");
    int_method!(deserialize_u8, u8, visit_u8, "a non-negative integer");
    int_method!(deserialize_u16, u16, visit_u16, "a non-negative integer");
    int_method!(deserialize_u32, u32, visit_u32, "a non-negative integer");
    int_method!(deserialize_u64, u64, visit_u64, "a non-negative integer");

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let f = self
            .scalar()
            .and_then(|s| {
                parse_int(s.text.trim())
                    .map(|i| i as f64)
                    .or_else(|| parse_float(s.text.trim()))
            })
            .ok_or_else(|| self.invalid("a number"))?;
        visitor
            .visit_f64(f)
            .map_err(|e: DeError| e.at(self.node.span))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.scalar() {
            Some(s) => visitor
                .visit_str(&s.text)
                .map_err(|e: DeError| e.at(self.node.span)),
            None => Err(self.invalid("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.node.value {
            Value::Null => visitor.visit_unit(),
            _ => Err(self.invalid("nothing (null)")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == RAW_NODE {
            RAW_SLOT.with(|slot| *slot.borrow_mut() = Some(self.node.clone()));
            return visitor.visit_unit();
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Seq(items) => visitor
                .visit_seq(SeqAccess { iter: items.iter() })
                .map_err(|e: DeError| e.at(self.node.span)),
            _ => Err(self.invalid("a list")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            Value::Map(entries) => visitor
                .visit_map(MapAccess {
                    iter: entries.iter(),
                    value: None,
                })
                .map_err(|e: DeError| e.at(self.node.span)),
            _ => Err(self.invalid("a mapping")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let span = self.node.span;
        match &self.node.value {
            Value::Scalar(s) => visitor
                .visit_enum(s.text.as_str().into_deserializer())
                .map_err(|e: DeError| e.at(span)),
            Value::Map(entries) if entries.len() == 1 => visitor
                .visit_enum(EnumAccess { entry: &entries[0] })
                .map_err(|e| e.at(span)),
            _ => Err(self.invalid("a name or a single-key mapping")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqAccess<'a> {
    iter: std::slice::Iter<'a, Node>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.iter.next() {
            Some(node) => seed
                .deserialize(NodeDe { node })
                .map(Some)
                .map_err(|e| e.at(node.span)),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct MapAccess<'a> {
    iter: std::slice::Iter<'a, (Node, Node)>,
    value: Option<(&'a Node, &'a Node)>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some((key, value));
        seed.deserialize(NodeDe { node: key })
            .map(Some)
            .map_err(|e| e.at(key.span))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((key, node)) = self.value.take() else {
            return Err(de::Error::custom("value requested before key"));
        };
        seed.deserialize(NodeDe { node })
            .map_err(|e| e.at(node.span).in_field(key.as_str().unwrap_or("null")))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct EnumAccess<'a> {
    entry: &'a (Node, Node),
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = DeError;
    type Variant = VariantAccess<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), DeError> {
        let (key, value) = self.entry;
        let v = seed
            .deserialize(NodeDe { node: key })
            .map_err(|e| e.at(key.span))?;
        Ok((v, VariantAccess { node: value }))
    }
}

struct VariantAccess<'a> {
    node: &'a Node,
}

impl<'de> de::VariantAccess<'de> for VariantAccess<'_> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(NodeDe { node: self.node })
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(NodeDe { node: self.node }, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(NodeDe { node: self.node }, visitor)
    }
}

/// Converts a node to JSON following PyYAML's resolution of plain scalars. Used for values that
/// have no schema of their own: params, conf defaults, op_kwargs.
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Null => J::Null,
        Value::Scalar(s) => match resolve(s) {
            Resolved::Bool(b) => J::Bool(b),
            Resolved::Int(i) => J::from(i),
            Resolved::Float(f) => serde_json::Number::from_f64(f)
                .map(J::Number)
                .unwrap_or_else(|| J::String(s.text.clone())),
            Resolved::Str(t) => J::String(t.to_owned()),
        },
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| (k.as_str().unwrap_or("null").to_owned(), to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::yaml::{Limits, parse};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct S {
        retries: Option<u32>,
        catchup: Option<bool>,
        name: Option<String>,
        tags: Option<Vec<String>>,
    }

    fn read(src: &str) -> Result<S, DeError> {
        from_node(&parse(src, 0, Limits::default()).unwrap())
    }

    #[test]
    fn reads_fields() {
        let s = read("retries: 3\ncatchup: yes\nname: 2025-01-01\ntags: [a, b]\n").unwrap();
        assert_eq!(s.retries, Some(3));
        assert_eq!(s.catchup, Some(true));
        assert_eq!(s.name.as_deref(), Some("2025-01-01"));
        assert_eq!(s.tags.unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn unknown_field_suggests() {
        let e = read("retires: 3\n").unwrap_err();
        assert_eq!(e.message, "unknown key `retires` (did you mean `retries`?)");
        assert_eq!(e.span.unwrap().line, 1);
    }

    #[test]
    fn wrong_type_names_field_and_position() {
        let e = read("name: x\nretries: many\n").unwrap_err();
        assert_eq!(
            e.describe(),
            "`retries`: expected a non-negative integer, found `many`"
        );
        assert_eq!((e.span.unwrap().line, e.span.unwrap().col), (2, 10));
        let e = read("retries: -1\n").unwrap_err();
        assert!(e.describe().contains("out of range"), "{}", e.describe());
        let e = read("tags: [a, [b]]\n").unwrap_err();
        assert_eq!(e.describe(), "`tags`: expected a string, found a list");
        assert_eq!(e.span.unwrap().col, 11);
    }

    #[test]
    fn json_resolution_follows_pyyaml() {
        let n = parse(
            "a: yes\nb: '1'\nc: 1.5\nd: 0x10\ne: [~, x]\n",
            0,
            Limits::default(),
        )
        .unwrap();
        assert_eq!(
            to_json(&n),
            serde_json::json!({"a": true, "b": "1", "c": 1.5, "d": 16, "e": [null, "x"]})
        );
    }

    #[test]
    fn suggestion_distance() {
        assert_eq!(
            did_you_mean("bash_comand", ["bash_command", "env"]),
            Some("bash_command")
        );
        assert_eq!(did_you_mean("zzz", ["bash_command", "env"]), None);
    }
}

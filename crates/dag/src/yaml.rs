//! A YAML reader that keeps the position of every node, so that every later diagnostic can name
//! the file, line and column it is about.
//!
//! It builds a small tree ([`Node`]) from `saphyr-parser` events and enforces budgets while doing
//! so: nesting depth and the number of nodes (aliases included) are capped, which makes deeply
//! nested documents and "billion laughs" alias bombs fail fast with bounded memory. Merge keys
//! (`<<: *defaults`) are resolved here, as PyYAML does, because dag-factory files use them.
//!
//! Scalars keep their source text; whether `2025-01-01` is a string or a date, or `yes` a boolean,
//! is decided by whoever reads the field (see `de.rs`), as it knows what it expects. This is
//! what makes `start_date: 2025-01-01` and `schedule: 0 3 * * *` read naturally.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError};

/// Which file a span belongs to: an index into the loader's file table. Merged defaults can
/// come from a `defaults.yml` other than the DAG file, so spans carry their file.
pub type FileId = u32;

/// A position in a YAML source: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub file: FileId,
    pub line: u32,
    pub col: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Span,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null`, `Null`, `NULL` or an empty plain scalar.
    Null,
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Plain (unquoted) scalars are resolved to booleans and numbers by context; quoted ones are
    /// always strings.
    pub plain: bool,
}

impl Node {
    pub fn new(span: Span, value: Value) -> Self {
        Node { span, value }
    }

    pub fn str(span: Span, text: impl Into<String>) -> Self {
        Node::new(
            span,
            Value::Scalar(Scalar {
                text: text.into(),
                plain: false,
            }),
        )
    }

    /// The text of a scalar node.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// Looks a key up in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short name of the node's kind for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar(_) => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// Number of nodes in this subtree, counting the node itself.
    pub fn size(&self) -> usize {
        1 + match &self.value {
            Value::Null | Value::Scalar(_) => 0,
            Value::Seq(items) => items.iter().map(Node::size).sum(),
            Value::Map(entries) => entries.iter().map(|(k, v)| k.size() + v.size()).sum(),
        }
    }
}

/// Budgets that keep hostile or accidental inputs cheap to reject.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_depth: usize,
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // A 100-task DAG is a few thousand nodes deep 6; these leave ample room for real files.
        Limits {
            max_depth: 64,
            max_nodes: 1_000_000,
        }
    }
}

/// A YAML syntax or budget error with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub span: Span,
    pub message: String,
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn span_of(file: FileId, marker: &saphyr_parser::Marker) -> Span {
    Span {
        file,
        line: u32::try_from(marker.line()).unwrap_or(u32::MAX),
        col: u32::try_from(marker.col() + 1).unwrap_or(u32::MAX),
    }
}

fn scan_error(file: FileId, e: &ScanError) -> YamlError {
    // The scanner has its own depth guard for flow collections; word it like ours.
    let message = if e.info().contains("recursion limit") {
        "invalid YAML: nesting too deep".to_owned()
    } else {
        format!("invalid YAML: {}", e.info())
    };
    YamlError {
        span: span_of(file, e.marker()),
        message,
    }
}

/// A collection being built, with the anchor it should be registered under when it closes.
enum Frame {
    Seq {
        span: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        span: Span,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
    },
}

struct Builder {
    file: FileId,
    limits: Limits,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    root: Option<Node>,
    documents: usize,
}

impl Builder {
    fn count(&mut self, n: usize, span: Span) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > self.limits.max_nodes {
            return Err(YamlError {
                span,
                message: format!(
                    "document too large: more than {} nodes (aliases included); \
                     is this an alias bomb?",
                    self.limits.max_nodes
                ),
            });
        }
        Ok(())
    }

    fn push_frame(&mut self, frame: Frame, span: Span) -> Result<(), YamlError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(YamlError {
                span,
                message: format!("nesting deeper than {} levels", self.limits.max_depth),
            });
        }
        self.count(1, span)?;
        self.stack.push(frame);
        Ok(())
    }

    /// Places a finished node into its parent (or makes it the document root).
    fn add(&mut self, node: Node) -> Result<(), YamlError> {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => {
                    if !matches!(node.value, Value::Scalar(_) | Value::Null) {
                        return Err(YamlError {
                            span: node.span,
                            message: format!("mapping keys must be scalars, found {}", node.kind()),
                        });
                    }
                    *pending_key = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
        Ok(())
    }

    fn register(&mut self, anchor: usize, node: &Node) {
        if anchor != 0 {
            let size = node.size();
            self.anchors.insert(anchor, (node.clone(), size));
        }
    }

    fn on_event(&mut self, event: Event<'_>, span: Span) -> Result<(), YamlError> {
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(YamlError {
                        span,
                        message: "a DAG file holds one YAML document; found a second `---`".into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                self.count(1, span)?;
                let node = scalar_node(span, text, style);
                self.register(anchor, &node);
                self.add(node)?;
            }
            Event::Alias(id) => {
                let Some((node, size)) = self.anchors.get(&id) else {
                    return Err(YamlError {
                        span,
                        message: "alias refers to an unknown anchor".into(),
                    });
                };
                let (mut node, size) = (node.clone(), *size);
                self.count(size, span)?;
                node.span = span;
                self.add(node)?;
            }
            Event::SequenceStart(anchor, _) => {
                let frame = Frame::Seq {
                    span,
                    anchor,
                    items: Vec::new(),
                };
                self.push_frame(frame, span)?;
            }
            Event::MappingStart(anchor, _) => {
                let frame = Frame::Map {
                    span,
                    anchor,
                    entries: Vec::new(),
                    pending_key: None,
                };
                self.push_frame(frame, span)?;
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq {
                    span,
                    anchor,
                    items,
                }) = self.stack.pop()
                {
                    let node = Node::new(span, Value::Seq(items));
                    self.register(anchor, &node);
                    self.add(node)?;
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    span,
                    anchor,
                    entries,
                    ..
                }) = self.stack.pop()
                {
                    let entries = resolve_merge_keys(entries)?;
                    let node = Node::new(span, Value::Map(entries));
                    self.register(anchor, &node);
                    self.add(node)?;
                }
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(())
    }
}

fn scalar_node(span: Span, text: Cow<'_, str>, style: ScalarStyle) -> Node {
    let plain = style == ScalarStyle::Plain;
    if plain && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL") {
        return Node::new(span, Value::Null);
    }
    Node::new(
        span,
        Value::Scalar(Scalar {
            text: text.into_owned(),
            plain,
        }),
    )
}

/// Applies YAML merge keys (`<<: *anchor` or `<<: [*a, *b]`): explicit keys win, then earlier
/// merge sources win over later ones. Duplicate explicit keys are an error (PyYAML silently keeps
/// the last one, which hides typos such as two tasks with the same id).
fn resolve_merge_keys(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, YamlError> {
    let mut out: Vec<(Node, Node)> = Vec::with_capacity(entries.len());
    // Key text -> line of first definition; a set keeps huge mappings linear.
    let mut seen: HashMap<String, u32> = HashMap::with_capacity(entries.len());
    let mut merges: Vec<Node> = Vec::new();
    for (key, value) in entries {
        if let Value::Scalar(Scalar { text, plain: true }) = &key.value
            && text == "<<"
        {
            match value.value {
                Value::Map(_) => merges.push(value),
                Value::Seq(items) => merges.extend(items),
                _ => {
                    return Err(YamlError {
                        span: value.span,
                        message: "a merge key `<<` needs a mapping or a list of mappings".into(),
                    });
                }
            }
            continue;
        }
        let text = key_text(&key);
        if let Some(first_line) = seen.get(text) {
            return Err(YamlError {
                span: key.span,
                message: format!("duplicate key `{text}` (first defined at line {first_line})"),
            });
        }
        seen.insert(text.to_owned(), key.span.line);
        out.push((key, value));
    }
    for source in merges {
        let Value::Map(src) = source.value else {
            return Err(YamlError {
                span: source.span,
                message: "a merge key `<<` needs a mapping or a list of mappings".into(),
            });
        };
        for (key, value) in src {
            if !seen.contains_key(key_text(&key)) {
                seen.insert(key_text(&key).to_owned(), key.span.line);
                out.push((key, value));
            }
        }
    }
    Ok(out)
}

/// A key's identity for duplicate detection and merging (keys are scalars or null).
fn key_text(key: &Node) -> &str {
    key.as_str().unwrap_or("null")
}

/// Parses one YAML document into a [`Node`] tree. An empty document gives a null node.
pub fn parse(source: &str, file: FileId, limits: Limits) -> Result<Node, YamlError> {
    let mut builder = Builder {
        file,
        limits,
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        root: None,
        documents: 0,
    };
    for item in Parser::new_from_str(source) {
        let (event, span) = item.map_err(|e| scan_error(file, &e))?;
        let span = span_of(builder.file, &span.start);
        builder.on_event(event, span)?;
    }
    Ok(builder.root.unwrap_or(Node::new(
        Span {
            file,
            line: 1,
            col: 1,
        },
        Value::Null,
    )))
}

/// Deep-merges `over` onto `base`: mappings merge key by key (recursively), anything else in
/// `over` replaces `base`. This is dag-factory's `merge_configs`, done on spanned nodes so that an
/// inherited value still points at the file and line it came from.
pub fn deep_merge(base: &Node, over: &Node) -> Node {
    let (Value::Map(b), Value::Map(o)) = (&base.value, &over.value) else {
        return over.clone();
    };
    let mut out: Vec<(Node, Node)> = Vec::with_capacity(b.len() + o.len());
    let over_index: HashMap<&str, usize> = o
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (key_text(k), i))
        .collect();
    for (bk, bv) in b {
        match over_index.get(key_text(bk)) {
            Some(&i) => out.push((o[i].0.clone(), deep_merge(bv, &o[i].1))),
            None => out.push((bk.clone(), bv.clone())),
        }
    }
    let base_keys: std::collections::HashSet<&str> = b.iter().map(|(k, _)| key_text(k)).collect();
    for (ok, ov) in o {
        if !base_keys.contains(key_text(ok)) {
            out.push((ok.clone(), ov.clone()));
        }
    }
    Node::new(over.span, Value::Map(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(src: &str) -> Result<Node, YamlError> {
        parse(src, 0, Limits::default())
    }

    #[test]
    fn keeps_positions() {
        let node = p("a:\n  b: 1\n  c: [x, 'y']\n").unwrap();
        let a = node.get("a").unwrap();
        let b = a.get("b").unwrap();
        assert_eq!((b.span.line, b.span.col), (2, 6));
        let c = a.get("c").unwrap().as_seq().unwrap();
        assert_eq!(c[1].as_str(), Some("y"));
        assert_eq!((c[1].span.line, c[1].span.col), (3, 10));
    }

    #[test]
    fn merge_keys_and_anchors() {
        let node = p("base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n").unwrap();
        let d = node.get("d").unwrap();
        assert_eq!(d.get("x").unwrap().as_str(), Some("1"));
        assert_eq!(d.get("y").unwrap().as_str(), Some("3"));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = p("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.span.line, 3);
        assert!(err.message.contains("duplicate key `a`"), "{}", err.message);
        assert!(err.message.contains("line 1"), "{}", err.message);
    }

    #[test]
    fn alias_bomb_is_rejected() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = p(&src).unwrap_err();
        assert!(err.message.contains("alias bomb"), "{}", err.message);
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let src = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        let err = p(&src).unwrap_err();
        assert!(err.message.contains("nesting"), "{}", err.message);
        let src = (0..1000).fold(String::new(), |mut s, i| {
            s.push_str(&" ".repeat(i));
            s.push_str("k:\n");
            s
        });
        assert!(p(&src).unwrap_err().message.contains("nesting"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = p("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.message.starts_with("invalid YAML"), "{}", err.message);
        assert!(err.span.line >= 1);
    }

    #[test]
    fn second_document_is_rejected() {
        let err = p("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(err.message.contains("second `---`"));
    }

    #[test]
    fn null_forms() {
        let node = p("a:\nb: ~\nc: 'null'\n").unwrap();
        assert!(node.get("a").unwrap().is_null());
        assert!(node.get("b").unwrap().is_null());
        assert_eq!(node.get("c").unwrap().as_str(), Some("null"));
    }

    #[test]
    fn deep_merge_keeps_overrides_and_spans() {
        let base = p("x: {a: 1, b: 2}\ny: 1\n").unwrap();
        let over = p("x: {b: 3}\nz: 2\n").unwrap();
        let m = deep_merge(&base, &over);
        let x = m.get("x").unwrap();
        assert_eq!(x.get("a").unwrap().as_str(), Some("1"));
        assert_eq!(x.get("b").unwrap().as_str(), Some("3"));
        assert_eq!(m.get("z").unwrap().as_str(), Some("2"));
        assert_eq!(m.get("y").unwrap().span.line, 2);
    }
}

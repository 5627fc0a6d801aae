//! How log fields are written: as tracing's default format does (`message name=value ...`),
//! but with control characters escaped in every value. Values are often user-supplied (a
//! username at a failed login, a run id, a task's error): a newline in one must not forge a
//! line of the server log, nor an escape sequence recolour the terminal.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// The field formatter of flow's log.
#[derive(Debug, Default, Clone, Copy)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        let value = escape(value);
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{value}")
        } else {
            write!(self.writer, "{sep}{}={value}", field.name())
        };
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.write(field, &text);
    }
}

/// `text` with every control character written as an escape (`\n`, `\u{1b}`).
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Set when the daemon's log is JSON (`[logging] format = "json"`).
static JSON_LOG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_json_log() {
    JSON_LOG.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A daemon's announcement to whoever started it (`flow: web UI at ...`): a line on stderr, or
/// with a JSON log a log event, so that every line of stderr stays one JSON object.
pub fn announce(message: &str) {
    if JSON_LOG.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!("{message}");
    } else {
        eprintln!("flow: {message}");
    }
}

/// A writer for JSON log lines that also escapes the control characters JSON allows raw: DEL
/// and the C1 controls (U+0080 to U+009F, which include CSI). The JSON formatter escapes
/// every other one; with these, a field read by `jq` or a terminal cannot recolour or forge
/// anything, as with the text format. The JSON text stays equal in meaning: these characters
/// only occur inside strings, where `\u00XX` is the same character.
#[derive(Debug)]
pub struct JsonEscaper<W>(pub W);

impl<W: std::io::Write> std::io::Write for JsonEscaper<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter hands over each event whole, so a character is never split here.
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        while i < buf.len() {
            match (buf[i], buf.get(i + 1)) {
                (0x7f, _) => {
                    out.extend_from_slice(b"\\u007f");
                    i += 1;
                }
                // U+0080..U+009F in UTF-8: C2 80..C2 9F.
                (0xc2, Some(&b)) if (0x80..=0x9f).contains(&b) => {
                    out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                    i += 2;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("alice"), "alice");
        assert_eq!(
            escape("eve\n2026-01-01T00:00:00Z INFO login ok username=admin"),
            "eve\\n2026-01-01T00:00:00Z INFO login ok username=admin"
        );
        assert_eq!(escape("a\u{1b}[31mred"), "a\\u{1b}[31mred");
    }

    /// Where a test subscriber writes, read back once the events are logged.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Through a real subscriber: one event, one line, whatever a field holds.
    #[test]
    fn an_event_stays_on_one_line() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields)
            .with_ansi(false)
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let username = "eve\nINFO forged line";
            tracing::info!(username = %username, "failed login");
        });
        let text = String::from_utf8(buf.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains("failed login username=eve\\nINFO forged line"),
            "{text}"
        );
    }

    /// The JSON format: one parseable object per event, no raw control character at all,
    /// the field's value intact once parsed.
    #[test]
    fn a_json_event_is_one_line_without_raw_control_characters() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || JsonEscaper(out.clone()))
            .finish();
        let username = "eve\nINFO forged\u{1b}[31m\u{9b}31m\u{7f} caf\u{e9} \u{a0}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(username = %username, "failed login");
        });
        let text = String::from_utf8(buf.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.trim_end().chars().any(char::is_control), "{text:?}");
        let event: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(event["fields"]["username"], username);
        assert_eq!(event["fields"]["message"], "failed login");
        assert_eq!(event["level"], "INFO");
        assert!(event["timestamp"].is_string() && event["target"].is_string());
    }
}

//! Airflow's connections: how to reach an external system (a Kafka cluster, a database),
//! named by `conn_id`. Parsed from Airflow's URI form (`AIRFLOW_CONN_*` / `FLOW_CONN_*`
//! variables, `--conn-uri`) or its JSON form, and written back as a URI.
//!
//! This module only knows the shape. Encryption at rest is the store's business, masking the
//! executor's.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::ids::validate_id;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub conn_id: String,
    pub conn_type: String,
    pub description: Option<String>,
    pub host: Option<String>,
    /// Airflow's `schema` field (a database name for SQL connections).
    pub schema: Option<String>,
    pub login: Option<String>,
    pub password: Option<String>,
    pub port: Option<u16>,
    /// A JSON object as text (Airflow keeps `extra` as text too).
    pub extra: Option<String>,
}

/// Debug output never shows the password or the extra (which may hold secrets).
impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("conn_id", &self.conn_id)
            .field("conn_type", &self.conn_type)
            .field("host", &self.host)
            .field("schema", &self.schema)
            .field("login", &self.login)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("port", &self.port)
            .field("extra", &self.extra.as_ref().map(|_| "***"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    #[error("invalid conn_id: {0}")]
    InvalidId(String),
    #[error("`conn_type` is required")]
    MissingType,
    #[error("connection URI `{uri}`: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("connection JSON: {0}")]
    BadJson(String),
    #[error("`extra` must be a JSON object: {0}")]
    BadExtra(String),
}

impl Connection {
    pub fn new(conn_id: &str, conn_type: &str) -> Result<Self, ConnectionError> {
        validate_id("conn_id", conn_id).map_err(|e| ConnectionError::InvalidId(e.to_string()))?;
        if conn_type.trim().is_empty() {
            return Err(ConnectionError::MissingType);
        }
        Ok(Connection {
            conn_id: conn_id.to_owned(),
            conn_type: conn_type.trim().to_owned(),
            description: None,
            host: None,
            schema: None,
            login: None,
            password: None,
            port: None,
            extra: None,
        })
    }

    /// The value of an `AIRFLOW_CONN_*` variable: a URI, or (starting with `{`) JSON.
    pub fn from_env_value(conn_id: &str, value: &str) -> Result<Self, ConnectionError> {
        if value.trim_start().starts_with('{') {
            Self::from_json(conn_id, value)
        } else {
            Self::from_uri(conn_id, value)
        }
    }

    /// Airflow's URI form: `type://login:password@host:port/schema?key=value` (or
    /// `?__extra__=<json>`); every part percent-encoded.
    pub fn from_uri(conn_id: &str, uri: &str) -> Result<Self, ConnectionError> {
        let bad = |reason: &str| ConnectionError::BadUri {
            uri: redact_uri(uri),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| bad("expected `type://...`"))?;
        if scheme.is_empty() {
            return Err(bad("the connection type (the URI scheme) is empty"));
        }
        let conn_type = match scheme {
            "postgresql" => "postgres".to_owned(),
            other => other.replace('-', "_"),
        };
        let mut conn = Connection::new(conn_id, &conn_type)?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (netloc, path) = match rest.split_once('/') {
            Some((n, p)) => (n, Some(p)),
            None => (rest, None),
        };
        let (userinfo, hostport) = match netloc.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, netloc),
        };
        if let Some(userinfo) = userinfo {
            let (login, password) = match userinfo.split_once(':') {
                Some((l, p)) => (l, Some(p)),
                None => (userinfo, None),
            };
            conn.login = non_empty(percent_decode(login).map_err(|e| bad(&e))?);
            if let Some(p) = password {
                conn.password = non_empty(percent_decode(p).map_err(|e| bad(&e))?);
            }
        }
        // A list of brokers (`a:9092,b:9092`) stays whole in `host`.
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !hostport.contains(',') && !p.is_empty() => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| bad(&format!("port `{p}` is not a number from 0 to 65535")))?;
                (h, Some(port))
            }
            _ => (hostport, None),
        };
        conn.host = non_empty(percent_decode(host).map_err(|e| bad(&e))?);
        conn.port = port;
        if let Some(path) = path {
            conn.schema = non_empty(percent_decode(path).map_err(|e| bad(&e))?);
        }
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            let mut extra = Map::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let k = percent_decode(&k.replace('+', " ")).map_err(|e| bad(&e))?;
                let v = percent_decode(&v.replace('+', " ")).map_err(|e| bad(&e))?;
                if k == "__extra__" {
                    conn.extra = Some(check_extra(&v)?);
                    extra.clear();
                    break;
                }
                extra.insert(k, Json::String(v));
            }
            if !extra.is_empty() {
                conn.extra = Some(Json::Object(extra).to_string());
            }
        }
        Ok(conn)
    }

    /// Airflow's JSON form: `{"conn_type": ..., "host": ..., "extra": {...}}`.
    pub fn from_json(conn_id: &str, text: &str) -> Result<Self, ConnectionError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Form {
            conn_type: Option<String>,
            description: Option<String>,
            host: Option<String>,
            schema: Option<String>,
            login: Option<String>,
            password: Option<String>,
            port: Option<u16>,
            extra: Option<Json>,
        }
        // serde's messages can quote a value (a password); say where and what kind instead.
        let form: Form = serde_json::from_str(text).map_err(|e| {
            let what = match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    "not valid JSON"
                }
                _ => "a field has the wrong type or is unknown (conn_type, description, host, schema, login, password, port, extra)",
            };
            ConnectionError::BadJson(format!("{what} at line {} column {}", e.line(), e.column()))
        })?;
        let mut conn = Connection::new(conn_id, form.conn_type.as_deref().unwrap_or(""))?;
        conn.description = form.description;
        conn.host = form.host;
        conn.schema = form.schema;
        conn.login = form.login;
        conn.password = form.password;
        conn.port = form.port;
        conn.extra = match form.extra {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(check_extra(&s)?),
            Some(v @ Json::Object(_)) => Some(v.to_string()),
            Some(other) => return Err(ConnectionError::BadExtra(other.to_string())),
        };
        Ok(conn)
    }

    /// `extra` as a JSON object (Airflow's `extra_dejson`); empty when unset.
    pub fn extra_json(&self) -> Map<String, Json> {
        self.extra
            .as_deref()
            .and_then(|e| serde_json::from_str::<Map<String, Json>>(e).ok())
            .unwrap_or_default()
    }

    /// Airflow's `get_uri`: every part percent-encoded; string-only extras as query
    /// parameters, any other extra as `__extra__=<json>`.
    pub fn to_uri(&self) -> String {
        let mut uri = format!("{}://", self.conn_type.replace('_', "-"));
        if self.login.is_some() || self.password.is_some() {
            uri.push_str(&percent_encode(self.login.as_deref().unwrap_or("")));
            if let Some(p) = &self.password {
                uri.push(':');
                uri.push_str(&percent_encode(p));
            }
            uri.push('@');
        }
        if let Some(host) = &self.host {
            uri.push_str(&percent_encode_host(host));
        }
        if let Some(port) = self.port {
            uri.push_str(&format!(":{port}"));
        }
        if let Some(schema) = &self.schema {
            uri.push('/');
            uri.push_str(&percent_encode(schema));
        }
        let extra = self.extra_json();
        if !extra.is_empty() {
            uri.push('?');
            if extra.values().all(Json::is_string) {
                let pairs: Vec<String> = extra
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{}={}",
                            percent_encode(k),
                            percent_encode(v.as_str().unwrap_or(""))
                        )
                    })
                    .collect();
                uri.push_str(&pairs.join("&"));
            } else {
                uri.push_str("__extra__=");
                uri.push_str(&percent_encode(&Json::Object(extra).to_string()));
            }
        }
        uri
    }

    /// The connection as it may be shown: the password and every sensitive extra value as
    /// `***` (an extra that is not a JSON object is hidden whole).
    pub fn masked(&self) -> Connection {
        const MASK: &str = "***";
        let mut c = self.clone();
        if c.password.is_some() {
            c.password = Some(MASK.into());
        }
        if let Some(text) = &self.extra {
            c.extra = Some(match serde_json::from_str::<Json>(text) {
                Ok(Json::Object(map)) => {
                    let masked: Map<String, Json> = map
                        .into_iter()
                        .map(|(k, v)| {
                            let v = if is_sensitive_name(&k) {
                                Json::from(MASK)
                            } else {
                                v
                            };
                            (k, v)
                        })
                        .collect();
                    Json::Object(masked).to_string()
                }
                _ => MASK.into(),
            });
        }
        c
    }

    /// Values that must never be shown: the password and every extra value under a
    /// sensitive-looking key (`sasl.password`, `ssl.key.pem`, ...).
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = self.password.iter().cloned().collect();
        for (k, v) in self.extra_json() {
            if is_sensitive_name(&k) {
                match v {
                    Json::String(s) => out.push(s),
                    Json::Null => {}
                    other => out.push(other.to_string()),
                }
            }
        }
        out.retain(|s| !s.is_empty());
        out
    }
}

/// Airflow's `DEFAULT_SENSITIVE_FIELDS`, plus the words of Kafka's secret settings
/// (`ssl.keystore.password`, `ssl.key.pem`, SASL credentials): a name containing one of these
/// (case-insensitive) holds a secret. The one list behind connection masking and the task log
/// masker.
const SENSITIVE_NAMES: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "authorization",
    "keyfile_dict",
    "passphrase",
    "passwd",
    "password",
    "private_key",
    "secret",
    "service_account",
    "token",
    "access_key",
    "credential",
    "key.pem",
    "keystore",
];

/// Whether a variable, connection extra key or env name holds a secret.
pub fn is_sensitive_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SENSITIVE_NAMES.iter().any(|s| lower.contains(s))
}

fn check_extra(text: &str) -> Result<String, ConnectionError> {
    match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(_)) => Ok(text.to_owned()),
        Ok(other) => Err(ConnectionError::BadExtra(format!("got {other}"))),
        Err(e) => Err(ConnectionError::BadExtra(e.to_string())),
    }
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

/// The URI with its credentials and query replaced by `***`, for error messages. Works on
/// malformed URIs too: everything between `://` and the last `@` goes, whatever it holds.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return "***".to_owned();
    };
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => rest.to_owned(),
    };
    let rest = match rest.split_once('?') {
        Some((before, _)) => format!("{before}?***"),
        None => rest,
    };
    format!("{scheme}://{rest}")
}

/// Decodes `%XX` escapes (a connection URI's parts, a cookie's value).
pub fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent escapes do not make UTF-8".to_owned())
}

fn percent_encode_with(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_encode(s: &str) -> String {
    percent_encode_with(s, b"")
}

/// Hosts keep `,` and `:` so that a broker list reads as written.
fn percent_encode_host(s: &str) -> String {
    percent_encode_with(s, b",:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_airflow_uris() {
        let c = Connection::from_uri(
            "db",
            "postgresql://us%40er:p%40ss%3Aword@db.example.com:5433/ana%2Flytics?sslmode=require&application_name=flow",
        )
        .unwrap();
        assert_eq!(c.conn_type, "postgres");
        assert_eq!(c.login.as_deref(), Some("us@er"));
        assert_eq!(c.password.as_deref(), Some("p@ss:word"));
        assert_eq!(c.host.as_deref(), Some("db.example.com"));
        assert_eq!(c.port, Some(5433));
        assert_eq!(c.schema.as_deref(), Some("ana/lytics"));
        assert_eq!(c.extra_json()["sslmode"], "require");
        assert_eq!(c.extra_json()["application_name"], "flow");
        // And back: Airflow's get_uri round-trips.
        let again = Connection::from_uri("db", &c.to_uri()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn extra_as_json_and_broker_lists() {
        let c = Connection::from_uri(
            "k",
            "kafka://b1:9092,b2:9092?__extra__=%7B%22security.protocol%22%3A%22SASL_SSL%22%2C%22n%22%3A1%7D",
        )
        .unwrap();
        assert_eq!(c.conn_type, "kafka");
        assert_eq!(c.host.as_deref(), Some("b1:9092,b2:9092"));
        assert_eq!(c.port, None);
        assert_eq!(c.extra_json()["security.protocol"], "SASL_SSL");
        assert_eq!(c.extra_json()["n"], 1);
        assert_eq!(Connection::from_uri("k", &c.to_uri()).unwrap(), c);
    }

    #[test]
    fn json_form_and_errors() {
        let c = Connection::from_env_value(
            "k",
            r#"{"conn_type": "kafka", "extra": {"bootstrap.servers": "h:1", "sasl.password": "s3cretvalue"}}"#,
        )
        .unwrap();
        assert_eq!(c.extra_json()["bootstrap.servers"], "h:1");
        assert_eq!(c.secrets(), vec!["s3cretvalue".to_owned()]);
        assert!(matches!(
            Connection::from_json("k", r#"{"host": "x"}"#),
            Err(ConnectionError::MissingType)
        ));
        assert!(matches!(
            Connection::from_json("k", r#"{"conn_type": "x", "extra": [1]}"#),
            Err(ConnectionError::BadExtra(_))
        ));
        let err = Connection::from_uri("k", "kafka://u:hunter22@h:99999").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("port `99999`"), "{text}");
        assert!(!text.contains("hunter22"), "{text}");
        // A password with an unencoded `/` breaks the URI; the error still hides it.
        let err = Connection::from_uri("k", "kafka://u:pa/ss-secret@h:1").unwrap_err();
        assert!(!err.to_string().contains("ss-secret"), "{err}");
        let err =
            Connection::from_json("k", r#"{"conn_type": "x", "password": 123456789}"#).unwrap_err();
        assert!(!err.to_string().contains("123456789"), "{err}");
        let c = Connection::from_uri("k", "kafka://u:hunter22@h:1").unwrap();
        assert!(!format!("{c:?}").contains("hunter22"));
        assert!(Connection::from_uri("bad id!", "kafka://h").is_err());
        assert!(Connection::from_uri("k", "no-scheme").is_err());
    }
}

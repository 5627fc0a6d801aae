//! Validated identifiers. Airflow allows `[A-Za-z0-9_.-]` up to 250 characters for dag, task and
//! pool ids; we enforce the same so that ids are safe in URLs, file names and log lines.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest id Airflow accepts (its `ID_LEN`).
pub const MAX_ID_LEN: usize = 250;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} `{value}` is {len} characters long; the limit is {MAX_ID_LEN}")]
    TooLong {
        kind: &'static str,
        value: String,
        len: usize,
    },
    #[error("{kind} `{value}` contains `{ch}`; only {allowed} are allowed")]
    InvalidChar {
        kind: &'static str,
        value: String,
        ch: char,
        /// The characters the id may hold, in words.
        allowed: &'static str,
    },
    /// `.`, or anything with `..`, would name a directory in paths and URLs.
    #[error("{kind} `{value}` must not be `.` or contain `..`, to prevent path traversal")]
    PathName { kind: &'static str, value: String },
}

/// What dag, task and pool ids may hold.
const ID_CHARS: &str = "letters, digits, `_`, `.` and `-`";
/// What run ids may hold.
const RUN_ID_CHARS: &str = "letters, digits, `_`, `.`, `-`, `:`, `+` and `~`";

/// Checks `value` against `[A-Za-z0-9_.-]{1,250}`.
pub fn validate_id(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if let Some(ch) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(IdError::InvalidChar {
            kind,
            value: value.to_owned(),
            ch,
            allowed: ID_CHARS,
        });
    }
    let len = value.chars().count();
    if len > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            value: value.to_owned(),
            len,
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `value`.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate_id($kind, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A DAG's id, e.g. `etl_daily`.
    DagId,
    "dag_id"
);
id_type!(
    /// A task's id within its DAG; tasks inside a task group carry the `group.task` prefix.
    TaskId,
    "task_id"
);
id_type!(
    /// A pool's name, e.g. `default_pool`.
    PoolId,
    "pool"
);

/// A dag run's id. Airflow builds them as `scheduled__2025-01-01T00:00:00+00:00`, so they may
/// contain `:` and `+`; users may pick their own. We accept printable ASCII without whitespace,
/// quotes, slashes or shell metacharacters beyond those Airflow itself produces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        if value.is_empty() {
            return Err(IdError::Empty { kind: "run_id" });
        }
        if let Some(ch) = value.chars().find(|c| {
            !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '+' | '~'))
        }) {
            return Err(IdError::InvalidChar {
                kind: "run_id",
                value,
                ch,
                allowed: RUN_ID_CHARS,
            });
        }
        if value == "." || value.contains("..") {
            return Err(IdError::PathName {
                kind: "run_id",
                value,
            });
        }
        let len = value.chars().count();
        if len > MAX_ID_LEN {
            return Err(IdError::TooLong {
                kind: "run_id",
                value,
                len,
            });
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RunId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_airflow_id_characters() {
        for id in ["etl_daily", "a", "A-b.c_9", "group.task", "0", "..", "-"] {
            assert_eq!(DagId::parse(id).unwrap().as_str(), id);
            assert_eq!(TaskId::parse(id).unwrap().to_string(), id);
            assert_eq!(PoolId::parse(id).unwrap().into_string(), id);
        }
    }

    #[test]
    fn length_limit_is_250() {
        let at_limit = "a".repeat(MAX_ID_LEN);
        assert!(DagId::parse(at_limit.clone()).is_ok());
        assert!(RunId::parse(at_limit).is_ok());

        let over = "a".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            TaskId::parse(over.clone()),
            Err(IdError::TooLong {
                kind: "task_id",
                value: over.clone(),
                len: 251
            })
        );
        assert_eq!(
            RunId::parse(over.clone()),
            Err(IdError::TooLong {
                kind: "run_id",
                value: over,
                len: 251
            })
        );
    }

    #[test]
    fn empty_is_rejected() {
        assert_eq!(DagId::parse(""), Err(IdError::Empty { kind: "dag_id" }));
        assert_eq!(PoolId::parse(""), Err(IdError::Empty { kind: "pool" }));
        assert_eq!(RunId::parse(""), Err(IdError::Empty { kind: "run_id" }));
        assert_eq!(
            DagId::parse("").unwrap_err().to_string(),
            "dag_id must not be empty"
        );
    }

    #[test]
    fn bad_characters_are_named() {
        for (id, ch) in [
            ("etl daily", ' '),
            ("etl/daily", '/'),
            ("a:b", ':'),
            ("a+b", '+'),
            ("tâche", 'â'),
            ("x\n", '\n'),
            ("$(rm)", '$'),
        ] {
            assert_eq!(
                DagId::parse(id),
                Err(IdError::InvalidChar {
                    kind: "dag_id",
                    value: id.to_owned(),
                    ch,
                    allowed: ID_CHARS,
                }),
                "{id:?}"
            );
        }
        assert_eq!(
            TaskId::parse("a b").unwrap_err().to_string(),
            "task_id `a b` contains ` `; only letters, digits, `_`, `.` and `-` are allowed"
        );
    }

    #[test]
    fn run_ids_allow_airflows_generated_form() {
        for id in [
            "scheduled__2025-01-01T00:00:00+00:00",
            "manual__2025-01-01T00:00:00.123456+00:00",
            "my_rerun~2",
        ] {
            assert_eq!(RunId::parse(id).unwrap().as_str(), id);
        }
        for (id, ch) in [
            ("a b", ' '),
            ("a/b", '/'),
            ("a;b", ';'),
            ("a'b", '\''),
            ("a$b", '$'),
        ] {
            assert_eq!(
                RunId::parse(id),
                Err(IdError::InvalidChar {
                    kind: "run_id",
                    value: id.to_owned(),
                    ch,
                    allowed: RUN_ID_CHARS,
                }),
                "{id:?}"
            );
        }
        // The message lists every character a run id may hold.
        assert_eq!(
            RunId::parse("a b").unwrap_err().to_string(),
            "run_id `a b` contains ` `; only letters, digits, `_`, `.`, `-`, `:`, `+` and `~` \
             are allowed"
        );
        for id in [".", "..", "a..b"] {
            assert_eq!(
                RunId::parse(id).unwrap_err().to_string(),
                format!("run_id `{id}` must not be `.` or contain `..`, to prevent path traversal")
            );
        }
        assert!(RunId::parse(".a").is_ok());
    }

    #[test]
    fn serde_validates() {
        let id: DagId = serde_json::from_str("\"etl_daily\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"etl_daily\"");
        let err = serde_json::from_str::<DagId>("\"etl daily\"").unwrap_err();
        assert!(err.to_string().contains("contains ` `"), "{err}");
        assert!(serde_json::from_str::<RunId>("\"\"").is_err());
        let run_id: RunId = serde_json::from_str("\"manual__x\"").unwrap();
        assert_eq!(serde_json::to_string(&run_id).unwrap(), "\"manual__x\"");
    }
}

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
    #[error(
        "{kind} `{value}` contains `{ch}`; only letters, digits, `_`, `.` and `-` are allowed"
    )]
    InvalidChar {
        kind: &'static str,
        value: String,
        ch: char,
    },
}

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
        if let Some(ch) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '+' | '~')))
        {
            return Err(IdError::InvalidChar {
                kind: "run_id",
                value,
                ch,
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

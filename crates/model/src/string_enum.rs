//! Fieldless enums that stand for one of Airflow's fixed strings (states, run types, trigger
//! rules, actors), and the error for parsing them.
//!
//! Each of these enums needs the same five things: the list of all values, the exact string,
//! parsing with an error that lists the valid strings, `Display`, and serde as that string. The
//! `string_enum!` macro writes them from a single `Variant => "string"` list, so the string a
//! value prints as, parses from and serializes as can never drift apart. It deliberately does
//! nothing else; behaviour belongs in ordinary `impl` blocks next to each enum.

/// A string that is not one of the values of a fixed vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`; expected one of: {}", .expected.join(", "))]
pub struct ParseEnumError {
    /// What was being parsed, e.g. `task instance state`.
    pub kind: &'static str,
    /// The rejected input.
    pub value: String,
    /// Every valid string, in declaration order.
    pub expected: &'static [&'static str],
}

/// Declares a `Copy` enum whose values are written as fixed strings.
///
/// Generates `ALL`, `as_str`, `parse`, `FromStr`, `Display`, `Serialize` and `Deserialize`.
/// Serde goes through `as_str`/`parse` rather than `rename_all` so that a variant whose name
/// cannot be its string (`NoStatus` is written `none`) needs no special case, and so that a bad
/// value in a file or request gets the same helpful error as one on the command line.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident as $kind:literal {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident => $string:literal,
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                $(#[$variant_meta])*
                $variant,
            )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: [Self; [$($string),+].len()] = [$(Self::$variant),+];

            /// The strings of `ALL`, in the same order; listed in parse errors.
            const NAMES: [&'static str; [$($string),+].len()] = [$($string),+];

            /// The exact string Airflow uses for this value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $string,)+
                }
            }

            /// Parses the exact string (case-sensitive, as in Airflow's database and API).
            pub fn parse(value: &str) -> Result<Self, $crate::string_enum::ParseEnumError> {
                Self::ALL
                    .into_iter()
                    .find(|candidate| candidate.as_str() == value)
                    .ok_or_else(|| $crate::string_enum::ParseEnumError {
                        kind: $kind,
                        value: value.to_owned(),
                        expected: &Self::NAMES,
                    })
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::string_enum::ParseEnumError;

            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Self::parse(value)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = String::deserialize(d)?;
                Self::parse(&value).map_err(serde::de::Error::custom)
            }
        }
    };
}

pub(crate) use string_enum;

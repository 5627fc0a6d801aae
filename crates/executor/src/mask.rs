//! Secret masking for logs and rendered fields, after Airflow's `secrets_masker`: values of
//! variables and env entries whose names look sensitive are replaced by `***`.

use std::borrow::Cow;

pub use flow_model::connection::is_sensitive_name;

use crate::render::{RenderedTask, RunContext};

/// Shorter values are not masked: masking `1` or `true` everywhere would garble logs and
/// reveal more than it hides. Airflow's `min_length_masked_secret` default.
const MIN_SECRET_LEN: usize = 5;

/// Replaces known secret values in text with `***`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Masker {
    /// Longest first, so a secret containing another is masked whole.
    secrets: Vec<String>,
}

impl Masker {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.trim().chars().count() >= MIN_SECRET_LEN)
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Masker { secrets }
    }

    /// Secrets of one task run: sensitive variables, and sensitive entries of a bash task's
    /// rendered `env`.
    pub fn for_run(ctx: &RunContext, rendered: &RenderedTask) -> Self {
        let mut secrets: Vec<String> = ctx
            .variables
            .iter()
            .filter(|(k, _)| is_sensitive_name(k))
            .map(|(_, v)| v.clone())
            .collect();
        if let RenderedTask::Bash { env: Some(env), .. } = rendered {
            secrets.extend(
                env.iter()
                    .filter(|(k, _)| is_sensitive_name(k))
                    .map(|(_, v)| v.clone()),
            );
        }
        Masker::new(secrets)
    }

    /// This masker plus more secrets (a connection's password, say).
    pub fn with(&self, more: impl IntoIterator<Item = String>) -> Self {
        Masker::new(self.secrets.iter().cloned().chain(more))
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), "***"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_longest_first_and_skips_short_values() {
        let m = Masker::new([
            "hunter2hunter2".to_owned(),
            "hunter2".to_owned(),
            "1".to_owned(),
        ]);
        assert_eq!(
            m.mask("pw=hunter2hunter2 or hunter2, 1"),
            "pw=*** or ***, 1"
        );
        assert!(is_sensitive_name("DB_PASSWORD"));
        assert!(is_sensitive_name("github_token"));
        assert!(!is_sensitive_name("region"));
    }
}

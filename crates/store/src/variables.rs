//! Airflow's variables: key, value and description. A variable whose key or description
//! names a secret (`password`, `token`, `api_key`, ... as Airflow masks them) is stored as a
//! Fernet token and shown as `***` by the API and the UI.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{Cipher, Result, Store, StoreError, to_micros};

/// One variable, decrypted.
#[derive(Clone, PartialEq, Eq)]
pub struct Variable {
    pub key: String,
    pub value: String,
    pub description: Option<String>,
}

impl std::fmt::Debug for Variable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Variable")
            .field("key", &self.key)
            .field(
                "value",
                &if self.is_sensitive() {
                    "***"
                } else {
                    &self.value
                },
            )
            .field("description", &self.description)
            .finish()
    }
}

impl Variable {
    /// Whether the key or the description names a secret.
    pub fn is_sensitive(&self) -> bool {
        flow_model::connection::is_sensitive_name(&self.key)
            || self
                .description
                .as_deref()
                .is_some_and(flow_model::connection::is_sensitive_name)
    }
}

/// A variable key: 1 to 250 characters, none of them control characters.
pub fn check_variable_key(key: &str) -> std::result::Result<(), String> {
    if key.is_empty() || key.chars().count() > 250 {
        return Err("a variable key has 1 to 250 characters".into());
    }
    if key.chars().any(char::is_control) {
        return Err("a variable key has no control characters".into());
    }
    Ok(())
}

fn row(r: &sqlx::any::AnyRow, cipher: Option<&Cipher>) -> Result<Variable> {
    let key: String = r.try_get("key")?;
    let stored: String = r.try_get("val")?;
    let value = if r.try_get::<i64, _>("is_encrypted")? != 0 {
        let cipher = cipher.ok_or_else(|| {
            StoreError::Invalid(format!(
                "variable `{key}` is encrypted and no fernet key is configured"
            ))
        })?;
        cipher
            .decrypt(&stored)
            .map_err(|e| StoreError::Invalid(format!("variable `{key}`: {e}")))?
    } else {
        stored
    };
    Ok(Variable {
        key,
        value,
        description: r.try_get("description")?,
    })
}

impl Store {
    /// Every variable, by key.
    pub async fn variable_list(&self, cipher: Option<&Cipher>) -> Result<Vec<Variable>> {
        let rows =
            sqlx::query("SELECT key, val, description, is_encrypted FROM variable ORDER BY key")
                .fetch_all(self.read_pool())
                .await?;
        rows.iter().map(|r| row(r, cipher)).collect()
    }

    pub async fn variable_get(
        &self,
        key: &str,
        cipher: Option<&Cipher>,
    ) -> Result<Option<Variable>> {
        let r =
            sqlx::query("SELECT key, val, description, is_encrypted FROM variable WHERE key = $1")
                .bind(key)
                .fetch_optional(self.read_pool())
                .await?;
        r.map(|r| row(&r, cipher)).transpose()
    }

    /// Creates or replaces a variable (`only_new`: creates only; returns false if it exists).
    /// A sensitive one is encrypted, and needs the key.
    pub async fn variable_set(
        &self,
        v: &Variable,
        cipher: Option<&Cipher>,
        only_new: bool,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        check_variable_key(&v.key).map_err(StoreError::Invalid)?;
        let (stored, encrypted) = if v.is_sensitive() {
            let cipher = cipher.ok_or_else(|| {
                StoreError::Invalid(format!(
                    "variable `{}` holds a secret and no fernet key is configured to encrypt it \
                     (FLOW__CORE__FERNET_KEY)",
                    v.key
                ))
            })?;
            (cipher.encrypt(&v.value), 1_i64)
        } else {
            (v.value.clone(), 0)
        };
        let on_conflict = if only_new {
            "DO NOTHING"
        } else {
            "DO UPDATE SET val = excluded.val, description = excluded.description, \
             is_encrypted = excluded.is_encrypted, updated_at = excluded.updated_at"
        };
        let mut tx = self.begin().await?;
        let n = sqlx::query(&format!(
            "INSERT INTO variable (key, val, description, is_encrypted, updated_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) {on_conflict}"
        ))
        .bind(&v.key)
        .bind(&stored)
        .bind(v.description.as_deref())
        .bind(encrypted)
        .bind(to_micros(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.commit(tx).await?;
        Ok(n > 0)
    }

    /// Re-encrypts every encrypted variable with the first key of `cipher` (after a key
    /// rotation: `new,old`). Returns how many were re-encrypted.
    pub async fn variables_rotate(&self, cipher: &Cipher, now: DateTime<Utc>) -> Result<usize> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query("SELECT key, val FROM variable WHERE is_encrypted = 1")
            .fetch_all(&mut *tx)
            .await?;
        for r in &rows {
            let key: String = r.try_get("key")?;
            let token: String = r.try_get("val")?;
            let plain = cipher
                .decrypt(&token)
                .map_err(|e| StoreError::Invalid(format!("variable `{key}`: {e}")))?;
            sqlx::query("UPDATE variable SET val = $1, updated_at = $2 WHERE key = $3")
                .bind(cipher.encrypt(&plain))
                .bind(to_micros(now))
                .bind(&key)
                .execute(&mut *tx)
                .await?;
        }
        self.commit(tx).await?;
        Ok(rows.len())
    }

    /// Deletes a variable; false if there was none.
    pub async fn variable_delete(&self, key: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM variable WHERE key = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(n > 0)
    }
}

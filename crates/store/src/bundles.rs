//! DAG bundles: the files of the dags folder stored by content hash, so that remote workers
//! get a python task's modules, a bash task's `.sh` file or a `.sql` template from the
//! database rather than from a shared file system. A bundle is named by the hash of its
//! manifest; a file that did not change is stored once, whatever the number of bundles.

use sqlx::Row;

use crate::{Result, Store};

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    /// Relative to the dags folder, `/`-separated.
    pub path: String,
    pub blob_hash: String,
    pub executable: bool,
}

impl Store {
    /// Whether a bundle is stored.
    pub async fn bundle_exists(&self, bundle_hash: &str) -> Result<bool> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM dag_bundle_file WHERE bundle_hash = $1")
                .bind(bundle_hash)
                .fetch_one(self.read_pool())
                .await?;
        Ok(n > 0)
    }

    /// Which of these blobs the store lacks.
    pub async fn bundle_missing_blobs(&self, hashes: &[String]) -> Result<Vec<String>> {
        let mut missing = Vec::new();
        for chunk in hashes.chunks(100) {
            let sql = format!(
                "SELECT hash FROM dag_bundle_blob WHERE hash IN ({})",
                crate::placeholders(1, chunk.len())
            );
            let mut q = sqlx::query_scalar::<_, String>(&sql);
            for h in chunk {
                q = q.bind(h);
            }
            let present: std::collections::HashSet<String> =
                q.fetch_all(self.read_pool()).await?.into_iter().collect();
            missing.extend(chunk.iter().filter(|h| !present.contains(*h)).cloned());
        }
        Ok(missing)
    }

    /// Stores a bundle: the blobs the store lacked (`blobs`: hash, content), its manifest,
    /// and marks the DAGs parsed from `fileloc_prefix` as using it. Idempotent: two
    /// processors storing the same folder write the same rows.
    pub async fn bundle_store(
        &self,
        bundle_hash: &str,
        files: &[BundleFile],
        blobs: &[(String, Vec<u8>)],
        fileloc_prefix: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        for (hash, content) in blobs {
            sqlx::query(
                "INSERT INTO dag_bundle_blob (hash, content) VALUES ($1, $2) \
                 ON CONFLICT (hash) DO NOTHING",
            )
            .bind(hash)
            .bind(content.clone())
            .execute(&mut *tx)
            .await?;
        }
        for f in files {
            sqlx::query(
                "INSERT INTO dag_bundle_file (bundle_hash, path, blob_hash, executable) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (bundle_hash, path) DO NOTHING",
            )
            .bind(bundle_hash)
            .bind(&f.path)
            .bind(&f.blob_hash)
            .bind(i64::from(f.executable))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE serialized_dag SET bundle_hash = $1 WHERE fileloc LIKE $2 ESCAPE '\\'")
            .bind(bundle_hash)
            .bind(format!("{}%", like_escape(fileloc_prefix)))
            .execute(&mut *tx)
            .await?;
        // Bundles no DAG uses any more, and blobs no bundle uses.
        sqlx::query(
            "DELETE FROM dag_bundle_file WHERE bundle_hash <> $1 AND bundle_hash NOT IN \
             (SELECT bundle_hash FROM serialized_dag WHERE bundle_hash IS NOT NULL)",
        )
        .bind(bundle_hash)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM dag_bundle_blob WHERE hash NOT IN (SELECT blob_hash FROM dag_bundle_file)",
        )
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(())
    }

    /// The bundle a DAG was parsed with, if any.
    pub async fn bundle_of_dag(&self, dag_id: &str) -> Result<Option<String>> {
        let hash: Option<Option<String>> =
            sqlx::query_scalar("SELECT bundle_hash FROM serialized_dag WHERE dag_id = $1")
                .bind(dag_id)
                .fetch_optional(self.read_pool())
                .await?;
        Ok(hash.flatten())
    }

    /// A bundle's files with their content: (path, executable, content).
    pub async fn bundle_files(&self, bundle_hash: &str) -> Result<Vec<(String, bool, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT f.path, f.executable, b.content FROM dag_bundle_file f \
             JOIN dag_bundle_blob b ON b.hash = f.blob_hash WHERE f.bundle_hash = $1 \
             ORDER BY f.path",
        )
        .bind(bundle_hash)
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| {
                let executable: i64 = r.try_get("executable")?;
                Ok((r.try_get("path")?, executable != 0, r.try_get("content")?))
            })
            .collect()
    }
}

/// `text` for a LIKE pattern, its wildcards taken literally (default escape `\`).
fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

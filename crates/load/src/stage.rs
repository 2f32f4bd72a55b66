//! The stage: an object store (`file://`, `s3://`, `gs://`, `az://`) and its layout.
//!
//! Layout: `<prefix>/<table>/dt=YYYY-MM-DD/gong_<first>-<last>.parquet`, where `first` and
//! `last` are the GONG_ENRICHED sequence range of the batch (20 digits, zero-padded so names
//! sort by sequence) and `dt` is the UTC day of the first event's `received_at` in the range.
//! Both are functions of the range only, so a rewrite of a range lands on the same names.
//!
//! A file becomes visible only when complete: the local store writes a staging file and renames
//! it; S3, GCS and Azure show a multipart upload only once it is completed.

use std::sync::Arc;

use bytes::Bytes;
use chrono::NaiveDate;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::buffered::BufWriter;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use gong_common::Env;

use crate::schema::Table;

/// Multipart part size (S3 needs at least 5 MiB per part but the last).
const PART_BYTES: usize = 10 * 1024 * 1024;
/// Parts uploaded concurrently per file.
const PART_CONCURRENCY: usize = 4;

/// A stage operation failed; retried with backoff, never acknowledged past.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// `STAGE_URL` could not be turned into a store.
    #[error("cannot open stage {url}: {reason}")]
    Open {
        /// The URL (credentials are never in it).
        url: String,
        /// Why.
        reason: String,
    },
    /// Reading a spool file failed.
    #[error("cannot read spool file {path}: {source}")]
    ReadSpool {
        /// Local path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing an object failed.
    #[error("cannot write {path} to the stage: {source}")]
    Write {
        /// Object path.
        path: String,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
    /// Listing or reading objects failed.
    #[error("cannot list or read {path} on the stage: {source}")]
    Read {
        /// Object path.
        path: String,
        /// Cause.
        #[source]
        source: object_store::Error,
    },
}

/// The deterministic file name of the range `first..=last`.
pub fn file_name(first: u64, last: u64) -> String {
    format!("gong_{first:020}-{last:020}.parquet")
}

/// Parses a name made by [`file_name`] back into its range.
pub fn parse_file_name(name: &str) -> Option<(u64, u64)> {
    let range = name.strip_prefix("gong_")?.strip_suffix(".parquet")?;
    let (first, last) = range.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// The path of a file relative to the stage root: `<table>/dt=YYYY-MM-DD/<name>`. This is
/// also the path Snowpipe's `insertFiles` expects (relative to the Snowflake stage).
pub fn relative_path(table: Table, dt: NaiveDate, first: u64, last: u64) -> String {
    format!(
        "{}/dt={}/{}",
        table.name(),
        dt.format("%Y-%m-%d"),
        file_name(first, last)
    )
}

/// An opened stage.
#[derive(Clone)]
pub struct Stage {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    /// The same store when it is a local directory (for its staging leftovers).
    local: Option<Arc<LocalFileSystem>>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// AWS variables read from the configuration (over the process environment, which
/// `AmazonS3Builder::from_env` reads for everything else, such as web-identity credentials).
pub(crate) const AWS_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
    "AWS_ALLOW_HTTP",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
];

impl Stage {
    /// Opens `url`: `file:///abs/path` or a plain local path (created if missing),
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`. Cloud credentials
    /// come from the usual `AWS_*`, `GOOGLE_*`, `AZURE_*` variables.
    pub fn open(url: &str, env: &Env) -> Result<Stage, StageError> {
        let open_error = |reason: String| StageError::Open {
            url: url.to_string(),
            reason,
        };
        if let Some((scheme, rest)) = url.split_once("://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = Path::from(prefix.trim_matches('/'));
            let store: Arc<dyn ObjectStore> = match scheme {
                "file" => return Stage::open_local(rest, url),
                "s3" | "s3a" => {
                    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                    for var in AWS_VARS {
                        if let Some(value) = env.get(var) {
                            let key: AmazonS3ConfigKey = var
                                .to_ascii_lowercase()
                                .parse()
                                .map_err(|err| open_error(format!("{var}: {err}")))?;
                            builder = builder.with_config(key, value);
                        }
                    }
                    let endpoint = env.get("AWS_ENDPOINT_URL").or(env.get("AWS_ENDPOINT"));
                    if let Some(endpoint) = endpoint {
                        // A custom endpoint (MinIO, moto, a VPC endpoint) speaks path-style.
                        builder = builder.with_endpoint(endpoint);
                        if env.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").is_none() {
                            builder = builder.with_virtual_hosted_style_request(false);
                        }
                        if endpoint.starts_with("http://") && env.get("AWS_ALLOW_HTTP").is_none() {
                            builder = builder.with_allow_http(true);
                        }
                    }
                    Arc::new(builder.build().map_err(|err| open_error(err.to_string()))?)
                }
                "gs" => Arc::new(
                    GoogleCloudStorageBuilder::from_env()
                        .with_bucket_name(bucket)
                        .build()
                        .map_err(|err| open_error(err.to_string()))?,
                ),
                "az" | "azure" | "abfs" => Arc::new(
                    MicrosoftAzureBuilder::from_env()
                        .with_container_name(bucket)
                        .build()
                        .map_err(|err| open_error(err.to_string()))?,
                ),
                other => {
                    return Err(open_error(format!(
                        "unsupported scheme {other}://; use file://, s3://, gs:// or az://"
                    )))
                }
            };
            return Ok(Stage {
                store,
                prefix,
                url: url.to_string(),
                local: None,
            });
        }
        Stage::open_local(url, url)
    }

    fn open_local(path: &str, url: &str) -> Result<Stage, StageError> {
        let open_error = |reason: String| StageError::Open {
            url: url.to_string(),
            reason,
        };
        std::fs::create_dir_all(path).map_err(|err| open_error(err.to_string()))?;
        // fsync: a file is acknowledged as durable, so it must survive a power loss, not only
        // a process crash (object_store's local store does not sync by default).
        let store = Arc::new(
            LocalFileSystem::new_with_prefix(path)
                .map_err(|err| open_error(err.to_string()))?
                .with_automatic_cleanup(true)
                .with_fsync(true),
        );
        Ok(Stage {
            store: store.clone(),
            prefix: Path::default(),
            url: url.to_string(),
            local: Some(store),
        })
    }

    /// The URL it was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object path of a path relative to the stage root.
    pub fn object_path(&self, relative: &str) -> Path {
        let mut path = self.prefix.clone();
        for part in relative.split('/').filter(|part| !part.is_empty()) {
            path = path.clone().join(part);
        }
        path
    }

    /// The size of the object at `relative`, or `None` when there is none. An object on the
    /// stage is always complete (uploads become visible only once whole).
    pub async fn existing_size(&self, relative: &str) -> Result<Option<u64>, StageError> {
        use object_store::ObjectStoreExt;
        let path = self.object_path(relative);
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(StageError::Read {
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Uploads a local file to `relative`, streaming it in parts; visible only once complete.
    /// Returns the bytes written.
    pub async fn upload(&self, local: &std::path::Path, relative: &str) -> Result<u64, StageError> {
        let destination = self.object_path(relative);
        let read_error = |source| StageError::ReadSpool {
            path: local.display().to_string(),
            source,
        };
        let write_error = |source| StageError::Write {
            path: destination.to_string(),
            source,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(read_error)?;
        let mut writer =
            BufWriter::with_capacity(self.store.clone(), destination.clone(), PART_BYTES)
                .with_max_concurrency(PART_CONCURRENCY);
        let mut total = 0u64;
        let streamed: Result<(), StageError> = async {
            loop {
                let mut chunk = vec![0u8; 1024 * 1024];
                let read = file.read(&mut chunk).await.map_err(read_error)?;
                if read == 0 {
                    return Ok(());
                }
                chunk.truncate(read);
                total += read as u64;
                writer.put(Bytes::from(chunk)).await.map_err(write_error)?;
            }
        }
        .await;
        if let Err(err) = streamed {
            // Drop any uploaded parts; nothing partial becomes visible either way.
            let _ = writer.abort().await;
            return Err(err);
        }
        // Completing the upload (or the single put) is what makes the object visible. A
        // failure here leaves nothing visible; the writer cleans up its own state.
        writer.shutdown().await.map_err(|err| {
            write_error(object_store::Error::Generic {
                store: "stage",
                source: Box::new(err),
            })
        })?;
        if let Some(local) = &self.local {
            remove_staging_leftovers(local, &destination);
        }
        Ok(total)
    }

    /// Objects under `relative` (recursively).
    pub async fn list(&self, relative: &str) -> Result<Vec<ObjectMeta>, StageError> {
        let path = self.object_path(relative);
        let prefix = if relative.is_empty() && self.prefix.as_ref().is_empty() {
            None
        } else {
            Some(&path)
        };
        self.store
            .list(prefix)
            .try_collect()
            .await
            .map_err(|source| StageError::Read {
                path: path.to_string(),
                source,
            })
    }

    /// Reads a whole object.
    pub async fn read(&self, path: &Path) -> Result<Bytes, StageError> {
        let read_error = |source| StageError::Read {
            path: path.to_string(),
            source,
        };
        let result = self
            .store
            .get_opts(path, Default::default())
            .await
            .map_err(read_error)?;
        result.bytes().await.map_err(read_error)
    }

    /// Path relative to the stage root of an object path, if it is under the prefix.
    pub fn relative_of(&self, path: &Path) -> Option<String> {
        let parts: Vec<String> = path
            .prefix_match(&self.prefix)?
            .map(|part| part.as_ref().to_string())
            .collect();
        Some(parts.join("/"))
    }
}

/// A local store writes `<name>#<n>` beside `<name>` and renames it when complete; a process
/// killed (or a disk failing) half-way leaves that staging file in the stage layout for ever,
/// and the next write of the name picks another `<n>`. Once `destination` is complete, its
/// leftovers are removed: a crashed write's range is always rewritten under the same name (the
/// claim precedes the upload), so this catches every leftover. Another replica's write of the
/// same name in flight only fails its rename and is retried (same content).
fn remove_staging_leftovers(local: &LocalFileSystem, destination: &Path) {
    let Ok(file) = local.path_to_filesystem(destination) else {
        return;
    };
    let (Some(dir), Some(name)) = (file.parent(), file.file_name()) else {
        return;
    };
    let staging_prefix = format!("{}#", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let entry_name = entry.file_name();
        let is_leftover = entry_name
            .to_string_lossy()
            .strip_prefix(&staging_prefix)
            .is_some_and(|suffix| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()));
        if is_leftover {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed a staging leftover of an interrupted write")
                }
                Err(err) => {
                    tracing::debug!(path = %entry.path().display(), error = %err, "cannot remove a staging leftover")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_sequence() {
        assert_eq!(parse_file_name(&file_name(7, 1234)), Some((7, 1234)));
        assert!(file_name(9, 9) < file_name(10, 10));
        let dt = NaiveDate::from_ymd_opt(2024, 1, 2).unwrap();
        assert_eq!(
            relative_path(Table::Calls, dt, 1, 2),
            "calls/dt=2024-01-02/gong_00000000000000000001-00000000000000000002.parquet"
        );
    }

    #[tokio::test]
    async fn a_completed_local_upload_removes_the_leftovers_of_interrupted_ones() {
        let root = tempfile::tempdir().unwrap();
        let stage = Stage::open(
            &format!("file://{}", root.path().display()),
            &Env::from_pairs::<&str, &str>([]),
        )
        .unwrap();
        let dir = root.path().join("calls/dt=2024-01-02");
        std::fs::create_dir_all(&dir).unwrap();
        // What a write killed half-way leaves behind, and an unrelated neighbour.
        std::fs::write(dir.join("x.parquet#1"), b"half a file").unwrap();
        std::fs::write(dir.join("y.parquet#1"), b"another name").unwrap();
        let local = root.path().join("spool.bin");
        std::fs::write(&local, b"complete").unwrap();
        stage
            .upload(&local, "calls/dt=2024-01-02/x.parquet")
            .await
            .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["x.parquet", "y.parquet#1"]);
        assert_eq!(std::fs::read(dir.join("x.parquet")).unwrap(), b"complete");
    }

    #[tokio::test]
    async fn local_upload_is_visible_under_the_layout() {
        let root = tempfile::tempdir().unwrap();
        let stage = Stage::open(
            &format!("file://{}", root.path().display()),
            &Env::from_pairs::<&str, &str>([]),
        )
        .unwrap();
        let local = root.path().join("spool.bin");
        std::fs::write(&local, vec![7u8; 3 * 1024 * 1024 + 5]).unwrap();
        let written = stage
            .upload(&local, "calls/dt=2024-01-02/x.parquet")
            .await
            .unwrap();
        assert_eq!(written, 3 * 1024 * 1024 + 5);
        let listed = stage.list("calls").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            stage.relative_of(&listed[0].location).unwrap(),
            "calls/dt=2024-01-02/x.parquet"
        );
    }
}

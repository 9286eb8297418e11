//! S3 replica (AWS S3 and S3-compatible stores), laid out exactly as Litestream's S3 client:
//! `<prefix>/<level as %04x>/<min>-<max>.ltx`, each object carrying the user metadata
//! `litestream-timestamp` = the LTX header timestamp (Go `RFC3339Nano`, UTC), which is what
//! `litestream restore -timestamp` reads.
//!
//! Invariants: an object is visible only once complete (PutObject and CompleteMultipartUpload are
//! atomic in S3) and a multipart upload that fails or is cancelled is aborted (best effort; a
//! bucket lifecycle rule `AbortIncompleteMultipartUpload` is the backstop for a crash). Cost: listing a tenant is one paginated `ListObjectsV2` over its whole
//! prefix (levels are parsed from the keys), writing is one `PutObject` (2 + parts for files
//! over [`PART_SIZE`]); `HeadObject` is sent only by [`S3Replica::list_with_timestamps`], which
//! point-in-time restore uses. Nothing is sent for a tenant nobody asks about.
//!
//! One [`S3Client`] (one connection pool, one retry budget) is shared by every tenant; an
//! [`S3Replica`] is that client plus one tenant's key prefix. Errors are classified into
//! [`ClientError`] variants: throttling, 5xx, timeouts and connection failures are
//! [`ClientError::Unavailable`] (retryable); missing buckets, refused credentials and other
//! rejections are permanent, with a message that says what to fix. Secrets never appear in
//! `Debug`, URLs or error messages.
//!
//! Submodules: `key` (object keys and the timestamp format), `error` (classification),
//! `metrics` (request counts by operation), `transport` (endpoints, `AWS_CA_BUNDLE`).

mod error;
mod key;
mod metrics;
mod transport;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use futures::{StreamExt, TryStreamExt};

use super::{ClientError, LtxInfo};
use crate::ltx::LtxFileName;
use error::{classify_service, error_chain};
use key::{clean_prefix, dir_of};
pub use key::{format_timestamp, parse_timestamp, InvalidKey, ObjectKey};
pub use metrics::RequestCounts;
use metrics::{CountRequests, Counters};
use transport::{https_client_with_ca_bundle, normalize_endpoint, strip_userinfo};

/// Files larger than this are sent as a multipart upload with parts of (at least) this size.
/// 5 MiB is S3's minimum part size and Litestream's default `part-size`.
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// S3's limit on parts per upload; bigger files get proportionally bigger parts.
const MAX_PARTS: usize = 10_000;
/// Parts of one multipart upload in flight at once (20 MiB of request bodies).
const PART_CONCURRENCY: usize = 4;
/// `HeadObject` requests in flight at once for [`S3Replica::list_with_timestamps`]
/// (Litestream uses 50; restore is a one-off, this keeps it polite to small stores).
const HEAD_CONCURRENCY: usize = 32;
/// `DeleteObjects` accepts at most 1000 keys per request.
const DELETE_BATCH: usize = 1000;
/// User metadata key Litestream reads for point-in-time restore (`x-amz-meta-litestream-timestamp`).
pub const TIMESTAMP_METADATA: &str = "litestream-timestamp";

/// SDK retry policy (standard mode: exponential backoff with full jitter, retry on throttling,
/// 5xx, timeouts and connection errors). 8 attempts (backoffs capped at 0.2+0.4+…+12.8 ≈ 25 s)
/// ride out a store restart or a burst of `SlowDown`; beyond that the tenant's own loop backs
/// off and retries the step, and the SDK's retry quota keeps a dead store from a retry storm.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(20);
/// A TCP/TLS connect that takes longer than this is a dead endpoint, not a slow one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt (request sent, response headers back). A 5 MiB part at 100 KB/s still fits.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// `GetObject` bodies are streamed after the SDK's retries are done; a body cut off mid-way
/// (connection reset) is retried this many times in total by [`S3Replica::read`].
const READ_ATTEMPTS: u32 = 4;
/// The status probe must answer quickly: two attempts, 5 s in all.
const PROBE_ATTEMPTS: u32 = 2;
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Static credentials, e.g. from a config file or a test. Without them the standard AWS chain
/// is used (environment, profiles, SSO, web identity, ECS/IMDS).
#[derive(Clone)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticCredentials(** redacted **)")
    }
}

/// How to reach the bucket. Validated by [`S3Client::connect`].
#[derive(Clone, Debug, Default)]
pub struct S3Config {
    pub bucket: String,
    /// S3-compatible endpoint (`-endpoint`, e.g. `http://127.0.0.1:9000`). Without it the AWS
    /// chain's `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3` / profile `endpoint_url` apply, else AWS.
    pub endpoint: Option<String>,
    /// `-region`; else the AWS chain; else `us-east-1` when a custom endpoint is used.
    pub region: Option<String>,
    /// Default: path-style (`endpoint/bucket/key`) whenever a custom endpoint is in use, as
    /// MinIO, moto and most S3-compatible stores need; virtual-hosted style on AWS.
    pub force_path_style: Option<bool>,
    /// PEM bundle of extra trusted CA certificates (in addition to the platform's roots).
    /// [`S3Config::new`] takes it from `AWS_CA_BUNDLE`, as the AWS CLI and Go SDK do; the Rust
    /// SDK itself ignores that variable.
    pub ca_bundle: Option<PathBuf>,
    pub credentials: Option<StaticCredentials>,
    /// Attempts per request including the first; 0 means [`DEFAULT_MAX_ATTEMPTS`].
    pub max_attempts: u32,
}

impl S3Config {
    /// A config for `bucket` with everything else from the environment / AWS chain.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            ca_bundle: std::env::var_os("AWS_CA_BUNDLE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            ..S3Config::default()
        }
    }
}

/// Result of [`S3Client::probe`], for `/api/status` and the dashboard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum S3Status {
    Ok,
    /// Network, DNS, TLS, timeouts, 5xx: the store did not answer usefully.
    Unreachable(String),
    /// The store answered but refused our credentials or permissions.
    AccessDenied(String),
    NoSuchBucket(String),
    /// Any other answer (wrong region, invalid configuration).
    Error(String),
}

impl S3Status {
    /// Short state for the dashboard: `ok`, `unreachable`, `access denied`, `no such bucket`, `error`.
    pub fn as_str(&self) -> &'static str {
        match self {
            S3Status::Ok => "ok",
            S3Status::Unreachable(_) => "unreachable",
            S3Status::AccessDenied(_) => "access denied",
            S3Status::NoSuchBucket(_) => "no such bucket",
            S3Status::Error(_) => "error",
        }
    }

    pub fn is_ok(&self) -> bool {
        *self == S3Status::Ok
    }

    fn from_error(e: ClientError) -> Self {
        match e {
            ClientError::NoSuchBucket(m) => S3Status::NoSuchBucket(m),
            ClientError::Denied(m) => S3Status::AccessDenied(m),
            ClientError::Unavailable(m) => S3Status::Unreachable(m),
            e => S3Status::Error(e.to_string()),
        }
    }
}

impl fmt::Display for S3Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            S3Status::Ok => f.write_str("ok"),
            S3Status::Unreachable(m)
            | S3Status::AccessDenied(m)
            | S3Status::NoSuchBucket(m)
            | S3Status::Error(m) => write!(f, "{}: {m}", self.as_str()),
        }
    }
}

/// A multipart upload that was open in the bucket (see [`S3Client::open_ltx_uploads`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenUpload {
    pub key: String,
    pub upload_id: String,
}

/// One connection to one bucket, shared by every tenant. Cloning is cheap.
#[derive(Clone)]
pub struct S3Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    s3: aws_sdk_s3::Client,
    bucket: String,
    /// Custom endpoint without user info (for URLs shown to people), if any.
    endpoint: Option<String>,
    region: String,
    counters: Arc<Counters>,
}

impl fmt::Debug for S3Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Client")
            .field("bucket", &self.inner.bucket)
            .field("endpoint", &self.inner.endpoint)
            .field("region", &self.inner.region)
            .finish_non_exhaustive()
    }
}

impl S3Client {
    /// Builds the client from `config` and the AWS chain. Sends no request: credentials are
    /// resolved lazily, and [`S3Client::probe`] checks reachability.
    pub async fn connect(config: S3Config) -> Result<S3Client, ClientError> {
        if config.bucket.is_empty() || config.bucket.contains('/') {
            return Err(ClientError::Config(format!(
                "invalid bucket name {:?}: give only the bucket, e.g. -bucket my-backups",
                config.bucket
            )));
        }
        let attempts = if config.max_attempts == 0 {
            DEFAULT_MAX_ATTEMPTS
        } else {
            config.max_attempts
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(attempts)
                    .with_initial_backoff(INITIAL_BACKOFF)
                    .with_max_backoff(MAX_BACKOFF),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        let ignore_env = std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
            .is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let env_endpoint = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty() && !ignore_env)
        };
        let s3_compatible = config.endpoint.is_some()
            || env_endpoint("AWS_ENDPOINT_URL_S3").is_some()
            || env_endpoint("AWS_ENDPOINT_URL").is_some();
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        } else if s3_compatible {
            // Not AWS: asking EC2's metadata service for a region is slow and meaningless.
            // Environment, then profile, then us-east-1 (what Litestream assumes).
            use aws_config::environment::region::EnvironmentVariableRegionProvider;
            use aws_config::meta::region::RegionProviderChain;
            use aws_config::profile::ProfileFileRegionProvider;
            loader = loader.region(
                RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
                    .or_else(ProfileFileRegionProvider::new())
                    .or_else(Region::new("us-east-1")),
            );
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(normalize_endpoint(endpoint)?);
        }
        if let Some(c) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                None,
                None,
                "litestream-manager",
            ));
        }
        if let Some(bundle) = &config.ca_bundle {
            loader = loader.http_client(https_client_with_ca_bundle(bundle)?);
        }
        let sdk = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&sdk);
        // The builder has no getter: find the endpoint the way it did (ours, then the
        // S3-specific variable, then the general one), to choose path-style addressing.
        let endpoint = match config.endpoint {
            Some(_) => sdk.endpoint_url().map(str::to_string),
            None => env_endpoint("AWS_ENDPOINT_URL_S3")
                .or_else(|| sdk.endpoint_url().map(str::to_string)),
        };
        let region = match sdk.region() {
            Some(r) => r.to_string(),
            None if endpoint.is_some() => {
                builder = builder.region(Region::new("us-east-1"));
                "us-east-1".to_string()
            }
            None => {
                return Err(ClientError::Config(
                    "no AWS region: pass -region (or set AWS_REGION / a profile region)".into(),
                ))
            }
        };
        let counters = Arc::new(Counters::default());
        let conf = builder
            .force_path_style(config.force_path_style.unwrap_or(endpoint.is_some()))
            // The SDK's default CRC trailers are not understood by every S3-compatible store;
            // each LTX file carries its own CRC-64, verified on every read, and SigV4 signs the
            // payload hash, so checksums are sent only where S3 requires them.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .interceptor(CountRequests(counters.clone()))
            .build();
        Ok(S3Client {
            inner: Arc::new(ClientInner {
                s3: aws_sdk_s3::Client::from_conf(conf),
                bucket: config.bucket,
                endpoint: endpoint.as_deref().map(strip_userinfo),
                region,
                counters,
            }),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.inner.bucket
    }

    pub fn region(&self) -> &str {
        &self.inner.region
    }

    /// The custom endpoint, if any (without credentials).
    pub fn endpoint(&self) -> Option<&str> {
        self.inner.endpoint.as_deref()
    }

    /// The replica of one tenant under `prefix` (e.g. `databases/<id>`). The prefix is cleaned
    /// like Litestream cleans its URL path: empty and `.` segments dropped, no leading `/`.
    pub fn replica(&self, prefix: &str) -> S3Replica {
        S3Replica {
            client: self.clone(),
            prefix: clean_prefix(prefix),
            metadata_timestamps: false,
        }
    }

    /// `s3://bucket/prefix`, with `?endpoint=…&region=…` for a custom endpoint: the form
    /// `litestream restore` and our `restore` accept. Never contains secrets.
    pub fn url_for(&self, prefix: &str) -> String {
        let prefix = clean_prefix(prefix);
        let mut url = format!("s3://{}/{}", self.inner.bucket, prefix);
        if let Some(e) = &self.inner.endpoint {
            url.push_str(&format!("?endpoint={e}&region={}", self.inner.region));
        }
        url
    }

    /// Requests sent so far by this client (all tenants), by operation.
    pub fn request_counts(&self) -> RequestCounts {
        self.inner.counters.snapshot()
    }

    /// The underlying SDK client, for tooling and tests (creating buckets, inspecting objects).
    pub fn sdk(&self) -> &aws_sdk_s3::Client {
        &self.inner.s3
    }

    /// Is the bucket reachable with our credentials? One `ListObjectsV2` (max 1 key) under
    /// `prefix` (the permission replication needs anyway), at most 2 attempts within 5 s.
    pub async fn probe(&self, prefix: &str) -> S3Status {
        let dir = dir_of(&clean_prefix(prefix));
        let res = self
            .inner
            .s3
            .list_objects_v2()
            .bucket(&self.inner.bucket)
            .prefix(&dir)
            .max_keys(1)
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::default()
                    .retry_config(RetryConfig::standard().with_max_attempts(PROBE_ATTEMPTS))
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(CONNECT_TIMEOUT)
                            .operation_timeout(PROBE_TIMEOUT)
                            .build(),
                    ),
            )
            .send()
            .await;
        match res {
            Ok(_) => S3Status::Ok,
            Err(e) => S3Status::from_error(self.classify(e, "ListObjectsV2", &dir)),
        }
    }

    /// The multipart uploads of LTX files (`<prefix>/<tenant>/<%04x>/<min>-<max>.ltx`) that are
    /// open in the bucket. Called once at start-up, before any tenant uploads: every one listed
    /// then was left by an earlier process that died mid-upload (kill -9, power loss). Nothing
    /// is ever made of such parts, but S3 bills their storage until the upload is aborted.
    /// One `ListMultipartUploads` per 1,000 open uploads.
    pub async fn open_ltx_uploads(&self, prefix: &str) -> Result<Vec<OpenUpload>, ClientError> {
        let dir = dir_of(&clean_prefix(prefix));
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .inner
                .s3
                .list_multipart_uploads()
                .bucket(&self.inner.bucket)
                .prefix(&dir)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(|e| self.classify(e, "ListMultipartUploads", &dir))?;
            for u in page.uploads() {
                let (Some(key), Some(upload_id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let is_ltx = key
                    .strip_prefix(dir.as_str())
                    .and_then(|rel| rel.split_once('/'))
                    .is_some_and(|(tenant, rest)| {
                        !tenant.is_empty() && rest.parse::<ObjectKey>().is_ok()
                    });
                if is_ltx {
                    out.push(OpenUpload {
                        key: key.to_string(),
                        upload_id: upload_id.to_string(),
                    });
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(out);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(out);
            }
        }
    }

    /// Aborts one upload listed by [`S3Client::open_ltx_uploads`], which frees its parts. An
    /// upload already gone (completed or aborted meanwhile) counts as done.
    pub async fn abort_upload(&self, upload: &OpenUpload) -> Result<(), ClientError> {
        let res = self
            .inner
            .s3
            .abort_multipart_upload()
            .bucket(&self.inner.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => match self.classify(e, "AbortMultipartUpload", &upload.key) {
                ClientError::NotFound(_) => Ok(()),
                e => Err(e),
            },
        }
    }

    fn object_url(&self, key: &str) -> String {
        format!("s3://{}/{}", self.inner.bucket, key)
    }

    /// Maps an SDK error to a [`ClientError`] whose message names the operation, the object and
    /// what to do about it.
    fn classify<E>(&self, err: SdkError<E, HttpResponse>, op: &str, key: &str) -> ClientError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let endpoint = self
            .inner
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("AWS S3 ({})", self.inner.region));
        let what = format!("{op} {}", self.object_url(key));
        error::classify(err, &self.inner.bucket, &what, &endpoint)
    }
}

/// One tenant's replica: the shared client plus the tenant's key prefix. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct S3Replica {
    client: S3Client,
    /// Cleaned key prefix without trailing `/`, e.g. `databases/<id>`.
    prefix: String,
    /// When set, listings read `created_at` from each object's `litestream-timestamp`
    /// (one `HeadObject` per object) instead of `LastModified`: exact, but costly.
    metadata_timestamps: bool,
}

impl S3Replica {
    pub fn client(&self) -> &S3Client {
        &self.client
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// This replica, but listings report each file's `litestream-timestamp` as `created_at`
    /// (a `HeadObject` per object). For point-in-time restore only.
    pub fn with_metadata_timestamps(mut self, on: bool) -> Self {
        self.metadata_timestamps = on;
        self
    }

    pub fn url(&self) -> String {
        self.client.url_for(&self.prefix)
    }

    /// The object key of one LTX file.
    pub fn key(&self, level: u8, name: LtxFileName) -> String {
        format!("{}{}", dir_of(&self.prefix), ObjectKey { level, name })
    }

    /// Files of one level: one paginated `ListObjectsV2` over `<prefix>/<%04x>/`.
    pub async fn list(&self, level: u8) -> Result<Vec<LtxInfo>, ClientError> {
        let prefix = format!("{}{:04x}/", dir_of(&self.prefix), level);
        let mut files = self.list_prefix(&prefix).await?;
        files.retain(|f| f.level == level);
        self.finish_listing(files).await
    }

    /// Files of all levels, sorted by (level, min, max): one paginated `ListObjectsV2` over the
    /// whole prefix. Anything that is not `<%04x level ≤ 9>/<min>-<max>.ltx` is ignored.
    pub async fn list_all(&self) -> Result<Vec<LtxInfo>, ClientError> {
        let files = self.list_prefix(&dir_of(&self.prefix)).await?;
        self.finish_listing(files).await
    }

    /// Like [`S3Replica::list_all`], with `created_at` = each object's `litestream-timestamp`
    /// (the LTX header timestamp), falling back to `LastModified` where it is missing, as
    /// Litestream does. One `HeadObject` per file, [`HEAD_CONCURRENCY`] at a time.
    pub async fn list_with_timestamps(&self) -> Result<Vec<LtxInfo>, ClientError> {
        let files = self.list_prefix(&dir_of(&self.prefix)).await?;
        self.with_timestamps(files).await
    }

    async fn finish_listing(&self, files: Vec<LtxInfo>) -> Result<Vec<LtxInfo>, ClientError> {
        if self.metadata_timestamps {
            self.with_timestamps(files).await
        } else {
            Ok(files)
        }
    }

    async fn list_prefix(&self, prefix: &str) -> Result<Vec<LtxInfo>, ClientError> {
        let dir = dir_of(&self.prefix);
        let mut pages = self
            .client
            .inner
            .s3
            .list_objects_v2()
            .bucket(&self.client.inner.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.client.classify(e, "ListObjectsV2", prefix))?;
            for obj in page.contents() {
                let Some(rel) = obj.key().and_then(|k| k.strip_prefix(dir.as_str())) else {
                    continue;
                };
                let Ok(key) = rel.parse::<ObjectKey>() else {
                    continue;
                };
                out.push(LtxInfo {
                    level: key.level,
                    min: key.name.min,
                    max: key.name.max,
                    size: obj.size().unwrap_or(0).max(0) as u64,
                    created_at: obj
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        out.sort_by_key(|f| (f.level, f.min, f.max));
        Ok(out)
    }

    async fn with_timestamps(&self, files: Vec<LtxInfo>) -> Result<Vec<LtxInfo>, ClientError> {
        // Futures are collected before streaming: a `map` closure in the stream's type makes the
        // callers' spawned futures fail the `Send` check (rust-lang/rust#102211).
        let mut heads = Vec::with_capacity(files.len());
        for mut f in files {
            let key = self.key(f.level, f.name());
            let req = self
                .client
                .inner
                .s3
                .head_object()
                .bucket(&self.client.inner.bucket)
                .key(&key);
            heads.push(async move {
                match req.send().await {
                    Ok(head) => {
                        if let Some(t) = head
                            .metadata()
                            .and_then(|m| m.get(TIMESTAMP_METADATA))
                            .and_then(|s| parse_timestamp(s))
                        {
                            f.created_at = t;
                        }
                        Ok(Some(f))
                    }
                    Err(e) => match self.client.classify(e, "HeadObject", &key) {
                        // Deleted by retention between the listing and the HEAD: not listed.
                        ClientError::NotFound(_) => Ok(None),
                        e => Err(e),
                    },
                }
            });
        }
        let files: Vec<Option<LtxInfo>> = futures::stream::iter(heads)
            .buffered(HEAD_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(files.into_iter().flatten().collect())
    }

    /// The whole object. A body cut off mid-way is fetched again (the SDK retries only until
    /// the response headers arrive); a short body is never returned.
    pub async fn read(&self, level: u8, name: LtxFileName) -> Result<Vec<u8>, ClientError> {
        let key = self.key(level, name);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let out = self
                .client
                .inner
                .s3
                .get_object()
                .bucket(&self.client.inner.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| self.client.classify(e, "GetObject", &key))?;
            let expected = out.content_length();
            let err = match out.body.collect().await {
                Ok(body) => {
                    let data = body.to_vec();
                    match expected {
                        Some(n) if n >= 0 && n as usize != data.len() => {
                            format!("got {} of {n} bytes", data.len())
                        }
                        _ => return Ok(data),
                    }
                }
                Err(e) => format!("body cut off: {}", error_chain(&e)),
            };
            if attempt >= READ_ATTEMPTS {
                return Err(ClientError::Unavailable(format!(
                    "GetObject {}: {err} (after {attempt} attempts)",
                    self.client.object_url(&key)
                )));
            }
            tokio::time::sleep(INITIAL_BACKOFF * 2u32.pow(attempt - 1)).await;
        }
    }

    /// Downloads the object into `dest` (created or truncated), streaming: memory stays at one
    /// body chunk. A body cut off mid-way is fetched again, as in [`S3Replica::read`].
    pub async fn read_to_file(
        &self,
        level: u8,
        name: LtxFileName,
        dest: &Path,
    ) -> Result<u64, ClientError> {
        use tokio::io::AsyncWriteExt as _;
        let key = self.key(level, name);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let out = self
                .client
                .inner
                .s3
                .get_object()
                .bucket(&self.client.inner.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| self.client.classify(e, "GetObject", &key))?;
            let expected = out.content_length();
            let mut file = tokio::fs::File::create(dest)
                .await
                .map_err(|e| ClientError::io(dest, e))?;
            let mut body = out.body;
            let mut got = 0u64;
            let err = loop {
                match body.try_next().await {
                    Ok(Some(chunk)) => {
                        file.write_all(&chunk)
                            .await
                            .map_err(|e| ClientError::io(dest, e))?;
                        got += chunk.len() as u64;
                    }
                    Ok(None) => match expected {
                        Some(n) if n >= 0 && n as u64 != got => {
                            break format!("got {got} of {n} bytes")
                        }
                        _ => {
                            file.flush().await.map_err(|e| ClientError::io(dest, e))?;
                            return Ok(got);
                        }
                    },
                    Err(e) => break format!("body cut off: {}", error_chain(&e)),
                }
            };
            if attempt >= READ_ATTEMPTS {
                return Err(ClientError::Unavailable(format!(
                    "GetObject {}: {err} (after {attempt} attempts)",
                    self.client.object_url(&key)
                )));
            }
            tokio::time::sleep(INITIAL_BACKOFF * 2u32.pow(attempt - 1)).await;
        }
    }

    /// Stores a whole LTX file with `litestream-timestamp` = `created_at`: one `PutObject`, or a
    /// multipart upload for files over [`PART_SIZE`] (aborted if it fails or is cancelled).
    pub async fn write(
        &self,
        level: u8,
        name: LtxFileName,
        data: Vec<u8>,
        created_at: SystemTime,
    ) -> Result<LtxInfo, ClientError> {
        self.write_from(level, name, Source::Bytes(data.into()), created_at)
            .await
    }

    /// Like [`S3Replica::write`], streaming the file at `path` (which stays in place): memory
    /// stays at [`PART_CONCURRENCY`] parts whatever the file's size.
    pub async fn write_file(
        &self,
        level: u8,
        name: LtxFileName,
        path: &Path,
        created_at: SystemTime,
    ) -> Result<LtxInfo, ClientError> {
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| ClientError::io(path, e))?
            .len();
        self.write_from(level, name, Source::File(path, len), created_at)
            .await
    }

    async fn write_from(
        &self,
        level: u8,
        name: LtxFileName,
        src: Source<'_>,
        created_at: SystemTime,
    ) -> Result<LtxInfo, ClientError> {
        let key = self.key(level, name);
        let ts = format_timestamp(created_at);
        let size = src.len();
        if size > PART_SIZE as u64 {
            self.write_multipart(&key, &ts, &src).await?;
        } else {
            self.client
                .inner
                .s3
                .put_object()
                .bucket(&self.client.inner.bucket)
                .key(&key)
                .metadata(TIMESTAMP_METADATA, &ts)
                .content_length(size as i64)
                .body(src.body(0, size).await?)
                .send()
                .await
                .map_err(|e| self.client.classify(e, "PutObject", &key))?;
        }
        Ok(LtxInfo {
            level,
            min: name.min,
            max: name.max,
            size,
            created_at,
        })
    }

    async fn write_multipart(
        &self,
        key: &str,
        ts: &str,
        src: &Source<'_>,
    ) -> Result<(), ClientError> {
        let s3 = &self.client.inner.s3;
        let bucket = &self.client.inner.bucket;
        let created = s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .metadata(TIMESTAMP_METADATA, ts)
            .send()
            .await
            .map_err(|e| self.client.classify(e, "CreateMultipartUpload", key))?;
        let Some(upload_id) = created.upload_id().map(str::to_string) else {
            return Err(ClientError::Other(format!(
                "CreateMultipartUpload {}: the store returned no upload id",
                self.client.object_url(key)
            )));
        };
        let guard = AbortOnDrop {
            s3: s3.clone(),
            bucket: bucket.clone(),
            key: key.to_string(),
            upload_id: upload_id.clone(),
            armed: true,
        };
        match self.upload_parts(key, &upload_id, src).await {
            Ok(()) => {
                guard.disarm();
                Ok(())
            }
            Err(e) => {
                guard.abort().await;
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        src: &Source<'_>,
    ) -> Result<(), ClientError> {
        let s3 = &self.client.inner.s3;
        let bucket = &self.client.inner.bucket;
        let total = src.len();
        let part_size = (PART_SIZE as u64).max(total.div_ceil(MAX_PARTS as u64));
        // Collected first (see `with_timestamps`); each part's body is built (bytes copied, or
        // a file range opened) only when its future first runs, so at most PART_CONCURRENCY
        // bodies exist at once.
        let mut uploads = Vec::new();
        for (i, offset) in (0..total).step_by(part_size as usize).enumerate() {
            let number = i as i32 + 1;
            let len = part_size.min(total - offset);
            let req = s3
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len as i64);
            uploads.push(async move {
                let out = req
                    .body(src.body(offset, len).await?)
                    .send()
                    .await
                    .map_err(|e| self.client.classify(e, "UploadPart", key))?;
                Ok::<_, ClientError>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                )
            });
        }
        let mut parts: Vec<CompletedPart> = futures::stream::iter(uploads)
            .buffer_unordered(PART_CONCURRENCY)
            .try_collect()
            .await?;
        parts.sort_by_key(|p| p.part_number());
        let complete = s3
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match complete {
            Ok(_) => Ok(()),
            // S3 reports late failures as 200 + `<Error>`, which the SDK parses into a code.
            // A 200 without a code is a success in a form the SDK rejects (moto 5.2 names the
            // root `CompleteMultipartUploadResponse`): confirm it with one HEAD.
            Err(SdkError::ServiceError(ctx))
                if ctx.raw().status().as_u16() == 200 && ctx.err().code().is_none() =>
            {
                let head = s3
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| self.client.classify(e, "HeadObject", key))?;
                if head.content_length() == Some(total as i64) {
                    Ok(())
                } else {
                    Err(ClientError::Other(format!(
                        "CompleteMultipartUpload {}: the store answered 200 but the object has {:?} bytes, not {total}",
                        self.client.object_url(key),
                        head.content_length(),
                    )))
                }
            }
            Err(e) => Err(self.client.classify(e, "CompleteMultipartUpload", key)),
        }
    }

    /// Deletes files (missing ones are fine): one `DeleteObjects` per 1000 keys.
    pub async fn delete(&self, files: &[LtxInfo]) -> Result<(), ClientError> {
        for batch in files.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|f| {
                    ObjectIdentifier::builder()
                        .key(self.key(f.level, f.name()))
                        .build()
                        .map_err(|e| ClientError::Other(format!("DeleteObjects: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let first = objects
                .first()
                .map(|o| o.key().to_string())
                .unwrap_or_default();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| ClientError::Other(format!("DeleteObjects: {e}")))?;
            let out = self
                .client
                .inner
                .s3
                .delete_objects()
                .bucket(&self.client.inner.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.client.classify(e, "DeleteObjects", &first))?;
            if let Some(e) = out.errors().iter().find(|e| e.code() != Some("NoSuchKey")) {
                let key = e.key().unwrap_or_default();
                let code = e.code().unwrap_or("");
                let status = match code {
                    "AccessDenied" => 403,
                    "SlowDown" | "InternalError" => 503,
                    _ => 400,
                };
                return Err(classify_service(
                    &self.client.inner.bucket,
                    &format!("DeleteObjects {}", self.client.object_url(key)),
                    status,
                    code,
                    e.message().unwrap_or(""),
                ));
            }
        }
        Ok(())
    }
}

/// What [`S3Replica::write_from`] uploads: bytes in memory, or a local file of known length.
enum Source<'a> {
    Bytes(bytes::Bytes),
    File(&'a Path, u64),
}

impl Source<'_> {
    fn len(&self) -> u64 {
        match self {
            Source::Bytes(b) => b.len() as u64,
            Source::File(_, len) => *len,
        }
    }

    /// The request body for `len` bytes at `offset`. A file body is re-readable, so the SDK
    /// can retry the request with it.
    async fn body(&self, offset: u64, len: u64) -> Result<ByteStream, ClientError> {
        match self {
            Source::Bytes(b) => Ok(ByteStream::from(
                b.slice(offset as usize..(offset + len) as usize),
            )),
            Source::File(path, _) => ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(aws_sdk_s3::primitives::Length::Exact(len))
                .build()
                .await
                .map_err(|e| ClientError::Other(format!("{}: {e}", path.display()))),
        }
    }
}

/// Aborts a multipart upload that did not complete, even if the writing future is dropped
/// (cancellation): the abort then runs as a detached task.
struct AbortOnDrop {
    s3: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: String,
    armed: bool,
}

impl AbortOnDrop {
    fn disarm(mut self) {
        self.armed = false;
    }

    fn request(
        &self,
    ) -> aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder
    {
        self.s3
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
    }

    async fn abort(mut self) {
        self.armed = false;
        if let Err(e) = self.request().send().await {
            tracing::warn!(key = %self.key, error = %error_chain(&e), "could not abort a failed multipart upload; a bucket lifecycle rule (AbortIncompleteMultipartUpload) will remove its parts");
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let req = self.request();
            let key = self.key.clone();
            rt.spawn(async move {
                if let Err(e) = req.send().await {
                    tracing::warn!(%key, error = %error_chain(&e), "could not abort a cancelled multipart upload");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = StaticCredentials {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "very-secret".into(),
        };
        let cfg = S3Config {
            bucket: "b".into(),
            credentials: Some(c),
            ..S3Config::default()
        };
        let s = format!("{cfg:?}");
        assert!(
            !s.contains("very-secret") && !s.contains("AKIAEXAMPLE"),
            "{s}"
        );
    }
}

//! S3 replica (AWS S3 and S3-compatible stores), laid out exactly as Litestream's S3 client:
//! `<prefix>/<level as %04x>/<min>-<max>.ltx`, each object carrying the user metadata
//! `litestream-timestamp` = the LTX header timestamp (Go `RFC3339Nano`, UTC), which is what
//! `litestream restore -timestamp` reads.
//!
//! Invariants: an object is visible only once complete (PutObject and CompleteMultipartUpload are
//! atomic in S3) and a multipart upload that fails or is cancelled is aborted, so no orphaned
//! parts accumulate. Cost: listing a tenant is one paginated `ListObjectsV2` over its whole
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

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    ConfigBag, Credentials, Intercept, Region, RequestChecksumCalculation,
    ResponseChecksumValidation, RuntimeComponents, SharedHttpClient,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use futures::{StreamExt, TryStreamExt};

use super::{ClientError, LtxInfo, SNAPSHOT_LEVEL};
use crate::ltx::LtxFileName;

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
/// 5xx, timeouts and connection errors). 8 attempts over ~40 s ride out a store restart or a
/// burst of `SlowDown`; beyond that the tenant's own loop backs off and retries the step.
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
        let msg = e.to_string();
        match e {
            ClientError::NoSuchBucket(_) => S3Status::NoSuchBucket(msg),
            ClientError::Denied(_) => S3Status::AccessDenied(msg),
            ClientError::Unavailable(_) => S3Status::Unreachable(msg),
            _ => S3Status::Error(msg),
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

/// HTTP requests sent to the store, by S3 operation, retries included (what S3 bills).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    pub list: u64,
    pub get: u64,
    pub head: u64,
    pub put: u64,
    pub create_multipart: u64,
    pub upload_part: u64,
    pub complete_multipart: u64,
    pub abort_multipart: u64,
    pub delete: u64,
    pub other: u64,
}

impl RequestCounts {
    pub fn total(&self) -> u64 {
        self.fields().iter().sum()
    }

    /// Requests sent since `earlier` was taken.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        let (a, b) = (self.fields(), earlier.fields());
        let d = |i: usize| a[i].saturating_sub(b[i]);
        RequestCounts {
            list: d(0),
            get: d(1),
            head: d(2),
            put: d(3),
            create_multipart: d(4),
            upload_part: d(5),
            complete_multipart: d(6),
            abort_multipart: d(7),
            delete: d(8),
            other: d(9),
        }
    }

    fn fields(&self) -> [u64; 10] {
        [
            self.list,
            self.get,
            self.head,
            self.put,
            self.create_multipart,
            self.upload_part,
            self.complete_multipart,
            self.abort_multipart,
            self.delete,
            self.other,
        ]
    }
}

/// Counts every HTTP attempt by operation, from its method and query string.
#[derive(Debug, Default)]
struct Counters([AtomicU64; 10]);

impl Counters {
    fn snapshot(&self) -> RequestCounts {
        let v = |i: usize| self.0[i].load(Ordering::Relaxed);
        RequestCounts {
            list: v(0),
            get: v(1),
            head: v(2),
            put: v(3),
            create_multipart: v(4),
            upload_part: v(5),
            complete_multipart: v(6),
            abort_multipart: v(7),
            delete: v(8),
            other: v(9),
        }
    }

    fn record(&self, method: &str, uri: &str) {
        let query = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
        let has = |param: &str| {
            query
                .split('&')
                .any(|kv| kv.split_once('=').map(|(k, _)| k).unwrap_or(kv) == param)
        };
        let i = match method {
            "GET" if has("list-type") => 0,
            "GET" => 1,
            "HEAD" => 2,
            "PUT" if has("partNumber") => 5,
            "PUT" => 3,
            "POST" if has("uploads") => 4,
            "POST" if has("uploadId") => 6,
            "POST" if has("delete") => 8,
            "DELETE" if has("uploadId") => 7,
            "DELETE" => 8,
            _ => 9,
        };
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct CountRequests(Arc<Counters>);

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let req = context.request();
        self.0.record(req.method(), req.uri());
        Ok(())
    }
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
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
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
        let ignore_env = std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")
            .is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let endpoint = match config.endpoint {
            Some(_) => sdk.endpoint_url().map(str::to_string),
            None => std::env::var("AWS_ENDPOINT_URL_S3")
                .ok()
                .filter(|v| !v.is_empty() && !ignore_env)
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

    fn object_url(&self, key: &str) -> String {
        format!("s3://{}/{}", self.inner.bucket, key)
    }

    /// Maps an SDK error to a [`ClientError`] whose message names the operation, the object and
    /// what to do about it.
    fn classify<E>(
        &self,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
        op: &str,
        key: &str,
    ) -> ClientError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let what = format!("{op} {}", self.object_url(key));
        let endpoint = self
            .inner
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("AWS S3 ({})", self.inner.region));
        match &err {
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                let code = ctx.err().code().unwrap_or("");
                let msg = ctx.err().message().unwrap_or("");
                classify_service(&self.inner.bucket, &what, status, code, msg)
            }
            SdkError::TimeoutError(_) => {
                ClientError::Unavailable(format!("{what}: no answer from {endpoint} in time"))
            }
            SdkError::DispatchFailure(d) => {
                let detail = DisplayErrorContext(&err).to_string();
                if let Some(e) = credentials_problem(&detail) {
                    return e;
                }
                if d.is_user() {
                    ClientError::Config(format!("{what}: {detail}"))
                } else {
                    ClientError::Unavailable(format!("{what}: cannot reach {endpoint}: {detail}"))
                }
            }
            SdkError::ResponseError(_) => ClientError::Unavailable(format!(
                "{what}: unreadable response from {endpoint}: {}",
                DisplayErrorContext(&err)
            )),
            SdkError::ConstructionFailure(_) => {
                let detail = DisplayErrorContext(&err).to_string();
                credentials_problem(&detail)
                    .unwrap_or_else(|| ClientError::Config(format!("{what}: {detail}")))
            }
            _ => ClientError::Other(format!("{what}: {}", DisplayErrorContext(&err))),
        }
    }
}

/// Missing or unusable credentials surface as a dispatch/construction failure of the identity
/// resolver; the SDK exposes no typed kind for it, so it is recognised by its message.
fn credentials_problem(detail: &str) -> Option<ClientError> {
    let lower = detail.to_ascii_lowercase();
    if lower.contains("no credentials")
        || lower.contains("credentials provider")
        || lower.contains("failed to load credentials")
        || lower.contains("credentialsnotloaded")
    {
        if lower.contains("timed out") || lower.contains("timeout") {
            return Some(ClientError::Unavailable(format!(
                "the AWS credentials provider did not answer in time: {detail}"
            )));
        }
        return Some(ClientError::Denied(format!(
            "no usable AWS credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance role ({detail})"
        )));
    }
    None
}

/// Classifies an error answer from the store by its S3 error code, falling back to the status.
fn classify_service(bucket: &str, what: &str, status: u16, code: &str, msg: &str) -> ClientError {
    let detail = if msg.is_empty() {
        format!("{code} (HTTP {status})")
    } else {
        format!("{code} (HTTP {status}): {msg}")
    };
    match code {
        "NoSuchBucket" => ClientError::NoSuchBucket(format!(
            "bucket {bucket:?} does not exist ({what}: {detail}); create it or fix -bucket/-endpoint/-region"
        )),
        "NoSuchKey" | "NotFound" | "NoSuchUpload" => ClientError::NotFound(format!("{what}: {detail}")),
        "InvalidAccessKeyId" => ClientError::Denied(format!(
            "{what}: the store does not know our access key id ({detail}); check AWS_ACCESS_KEY_ID or the profile"
        )),
        "SignatureDoesNotMatch" => ClientError::Denied(format!(
            "{what}: the request signature was refused ({detail}); check AWS_SECRET_ACCESS_KEY and the system clock"
        )),
        "ExpiredToken" | "TokenRefreshRequired" | "InvalidToken" => ClientError::Denied(format!(
            "{what}: the session token is expired or invalid ({detail}); refresh the credentials"
        )),
        "AccessDenied" | "AllAccessDisabled" | "AccountProblem" | "InvalidSecurity"
        | "InvalidObjectState" => ClientError::Denied(format!(
            "{what}: access denied ({detail}); the credentials need s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on this bucket"
        )),
        "SlowDown" | "Throttling" | "ThrottlingException" | "ThrottledException"
        | "RequestThrottled" | "RequestThrottledException" | "TooManyRequestsException"
        | "RequestLimitExceeded" | "BandwidthLimitExceeded" | "ProvisionedThroughputExceededException"
        | "RequestTimeout" | "RequestTimeoutException" | "InternalError" | "ServiceUnavailable"
        | "OperationAborted" | "RequestTimeTooSkewed" | "PriorRequestNotComplete" => {
            ClientError::Unavailable(format!("{what}: {detail}"))
        }
        "PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException" => {
            ClientError::Config(format!(
                "{what}: the bucket is in another region or needs another endpoint ({detail}); fix -region/-endpoint"
            ))
        }
        _ => match status {
            404 => ClientError::NotFound(format!("{what}: {detail}")),
            401 | 403 => ClientError::Denied(format!("{what}: access denied ({detail})")),
            301 | 307 => ClientError::Config(format!(
                "{what}: redirected ({detail}); fix -region/-endpoint"
            )),
            408 | 429 | 500..=599 => ClientError::Unavailable(format!("{what}: {detail}")),
            _ => ClientError::Rejected(format!("{what}: {detail}")),
        },
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
                Err(e) => format!("body cut off: {}", DisplayErrorContext(&e)),
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
        let key = self.key(level, name);
        let ts = format_timestamp(created_at);
        let size = data.len();
        if size > PART_SIZE {
            self.write_multipart(&key, &ts, data).await?;
        } else {
            self.client
                .inner
                .s3
                .put_object()
                .bucket(&self.client.inner.bucket)
                .key(&key)
                .metadata(TIMESTAMP_METADATA, &ts)
                .content_length(size as i64)
                .body(ByteStream::from(data))
                .send()
                .await
                .map_err(|e| self.client.classify(e, "PutObject", &key))?;
        }
        Ok(LtxInfo {
            level,
            min: name.min,
            max: name.max,
            size: size as u64,
            created_at,
        })
    }

    async fn write_multipart(&self, key: &str, ts: &str, data: Vec<u8>) -> Result<(), ClientError> {
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
        match self.upload_parts(key, &upload_id, &data).await {
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
        data: &[u8],
    ) -> Result<(), ClientError> {
        let s3 = &self.client.inner.s3;
        let bucket = &self.client.inner.bucket;
        let part_size = PART_SIZE.max(data.len().div_ceil(MAX_PARTS));
        // Collected first (see `with_timestamps`); each part's bytes are copied only when its
        // future first runs, so at most PART_CONCURRENCY copies exist at once.
        let mut uploads = Vec::new();
        for (i, chunk) in data.chunks(part_size).enumerate() {
            let number = i as i32 + 1;
            let req = s3
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(chunk.len() as i64);
            uploads.push(async move {
                let out = req
                    .body(ByteStream::from(chunk.to_vec()))
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
        s3.complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.client.classify(e, "CompleteMultipartUpload", key))?;
        Ok(())
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
            tracing::warn!(key = %self.key, error = %DisplayErrorContext(&e), "could not abort a failed multipart upload; a bucket lifecycle rule (AbortIncompleteMultipartUpload) will remove its parts");
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
                    tracing::warn!(%key, error = %DisplayErrorContext(&e), "could not abort a cancelled multipart upload");
                }
            });
        }
    }
}

/// Where one LTX file lives relative to a replica's prefix: `<level as %04x>/<min>-<max>.ltx`.
/// The one place that formats and parses S3 object keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    /// 0..=9 ([`SNAPSHOT_LEVEL`]).
    pub level: u8,
    pub name: LtxFileName,
}

#[derive(Debug, thiserror::Error)]
#[error("not an LTX object key (<%04x level>/<min>-<max>.ltx): {0:?}")]
pub struct InvalidKey(String);

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}/{}", self.level, self.name)
    }
}

impl FromStr for ObjectKey {
    type Err = InvalidKey;

    fn from_str(s: &str) -> Result<Self, InvalidKey> {
        let bad = || InvalidKey(s.to_string());
        let (level, name) = s.split_once('/').ok_or_else(bad)?;
        if level.len() != 4
            || !level
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(bad());
        }
        let level = u8::from_str_radix(level, 16).map_err(|_| bad())?;
        if level > SNAPSHOT_LEVEL {
            return Err(bad());
        }
        let name = LtxFileName::parse(name).ok_or_else(bad)?;
        Ok(ObjectKey { level, name })
    }
}

/// Formats like Go's `time.RFC3339Nano` in UTC: fraction with trailing zeros trimmed, `Z`
/// (`2026-11-29T13:59:18.75Z`, `2026-11-29T13:59:18Z`).
pub fn format_timestamp(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t).to_offset(time::UtcOffset::UTC);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    let nanos = dt.nanosecond();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Parses an RFC 3339 timestamp (any offset, any fraction).
pub fn parse_timestamp(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

fn clean_prefix(prefix: &str) -> String {
    prefix
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// `prefix/`, or the bucket root for an empty prefix.
fn dir_of(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// Accepts `host:port` as Litestream does (http:// for local hosts, else https://).
fn normalize_endpoint(endpoint: &str) -> Result<String, ClientError> {
    let e = endpoint.trim().trim_end_matches('/');
    if e.is_empty() {
        return Err(ClientError::Config("empty -endpoint".into()));
    }
    if e.starts_with("http://") || e.starts_with("https://") {
        return Ok(e.to_string());
    }
    if e.contains("://") {
        return Err(ClientError::Config(format!(
            "-endpoint {e:?}: only http:// and https:// are supported"
        )));
    }
    let host = e.split(':').next().unwrap_or("");
    let local = host == "localhost"
        || host.starts_with("127.")
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_private() || ip.is_loopback());
    Ok(format!("{}://{e}", if local { "http" } else { "https" }))
}

fn strip_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let host = authority
                .rsplit_once('@')
                .map(|(_, h)| h)
                .unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

/// The SDK's default HTTPS client (rustls with aws-lc, platform roots, proxy from the
/// environment) plus the CA certificates of `bundle`. Certificates that rustls cannot use are
/// skipped (and counted in the log) rather than failing every request later.
fn https_client_with_ca_bundle(bundle: &std::path::Path) -> Result<SharedHttpClient, ClientError> {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    use aws_smithy_http_client::{proxy::ProxyConfig, Builder, ConnectorBuilder};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    let pem = std::fs::read(bundle).map_err(|e| {
        ClientError::Config(format!(
            "cannot read the CA bundle {} (AWS_CA_BUNDLE): {e}",
            bundle.display()
        ))
    })?;
    let mut trust = TrustStore::default();
    let (mut usable, mut skipped) = (0usize, 0usize);
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let Ok(cert) = cert else {
            skipped += 1;
            continue;
        };
        if rustls::RootCertStore::empty().add(cert.clone()).is_err() {
            skipped += 1;
            continue;
        }
        // Re-encode as PEM: the trust store takes PEM and parses it when a connector is built.
        trust = trust.with_pem_certificate(der_to_pem(&cert));
        usable += 1;
    }
    if usable == 0 {
        return Err(ClientError::Config(format!(
            "the CA bundle {} (AWS_CA_BUNDLE) holds no usable PEM certificate",
            bundle.display()
        )));
    }
    if skipped > 0 {
        tracing::warn!(bundle = %bundle.display(), usable, skipped, "some certificates of the CA bundle are not usable and were skipped");
    }
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| ClientError::Config(format!("CA bundle {}: {e}", bundle.display())))?;
    // Same construction as aws-smithy-runtime's default HTTPS client, with our trust store.
    Ok(
        Builder::new().build_with_connector_fn(move |settings, components| {
            let mut conn = ConnectorBuilder::default()
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(context.clone());
            conn.set_connector_settings(settings.cloned());
            if let Some(c) = components {
                conn.set_sleep_impl(c.sleep_impl());
            }
            conn.set_proxy_config(Some(ProxyConfig::from_env()));
            conn.build()
        }),
    )
}

fn der_to_pem(der: &[u8]) -> Vec<u8> {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | ((*b as u32) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = b"-----BEGIN CERTIFICATE-----\n".to_vec();
    for line in b64.chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ltx::Txid;

    fn name(min: u64, max: u64) -> LtxFileName {
        LtxFileName {
            min: Txid(min),
            max: Txid(max),
        }
    }

    #[test]
    fn object_key_roundtrips() {
        for level in 0..=SNAPSHOT_LEVEL {
            let k = ObjectKey {
                level,
                name: name(1, 0x2a),
            };
            let s = k.to_string();
            assert_eq!(
                s,
                format!("000{level}/0000000000000001-000000000000002a.ltx")
            );
            assert_eq!(s.parse::<ObjectKey>().unwrap(), k);
        }
    }

    #[test]
    fn object_key_rejects_junk() {
        for junk in [
            "0000/0000000000000001-0000000000000001.ltx.tmp",
            "0/0000000000000001-0000000000000001.ltx",
            "000a/0000000000000001-0000000000000001.ltx",
            "000A/0000000000000001-0000000000000001.ltx",
            "ltx/0/0000000000000001-0000000000000001.ltx",
            "0000/sub/0000000000000001-0000000000000001.ltx",
            "0000/0000000000000002-0000000000000001.ltx",
            "lock.json",
            "generations/abc/wal/x.wal.lz4",
            "0000/",
        ] {
            assert!(junk.parse::<ObjectKey>().is_err(), "{junk}");
        }
    }

    #[test]
    fn timestamps_format_like_go_rfc3339nano() {
        let t = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        // 2026-11-29T13:59:18Z = 1795960758 s.
        assert_eq!(
            format_timestamp(t(1_795_960_758_750)),
            "2026-11-29T13:59:18.75Z"
        );
        assert_eq!(
            format_timestamp(t(1_795_960_757_749)),
            "2026-11-29T13:59:17.749Z"
        );
        assert_eq!(
            format_timestamp(t(1_795_960_758_000)),
            "2026-11-29T13:59:18Z"
        );
        assert_eq!(
            format_timestamp(t(1_795_960_758_100)),
            "2026-11-29T13:59:18.1Z"
        );
        let ns = SystemTime::UNIX_EPOCH + Duration::new(1_795_960_758, 123_456_789);
        assert_eq!(format_timestamp(ns), "2026-11-29T13:59:18.123456789Z");
        for ms in [0, 1, 1_795_960_758_750, 1_795_960_757_749] {
            assert_eq!(parse_timestamp(&format_timestamp(t(ms))), Some(t(ms)));
        }
    }

    #[test]
    fn service_errors_are_classified() {
        let c = |status, code| classify_service("bk", "PutObject s3://bk/k", status, code, "m");
        assert!(matches!(
            c(404, "NoSuchBucket"),
            ClientError::NoSuchBucket(_)
        ));
        assert!(c(404, "NoSuchBucket").is_permanent());
        assert!(c(404, "NoSuchBucket")
            .to_string()
            .contains("\"bk\" does not exist"));
        for code in [
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ] {
            let e = c(403, code);
            assert!(matches!(e, ClientError::Denied(_)), "{code}");
            assert!(e.is_permanent() && !e.is_retryable(), "{code}");
        }
        for (status, code) in [
            (503, "SlowDown"),
            (500, "InternalError"),
            (400, "RequestTimeout"),
            (502, ""),
            (429, ""),
        ] {
            let e = c(status, code);
            assert!(matches!(e, ClientError::Unavailable(_)), "{status} {code}");
            assert!(e.is_retryable() && !e.is_permanent(), "{status} {code}");
        }
        assert!(matches!(c(404, "NoSuchKey"), ClientError::NotFound(_)));
        assert!(matches!(
            c(301, "PermanentRedirect"),
            ClientError::Config(_)
        ));
        assert!(c(400, "InvalidArgument").is_permanent());
    }

    #[test]
    fn request_counter_recognises_operations() {
        let c = Counters::default();
        c.record("GET", "http://h/b?list-type=2&prefix=x");
        c.record("GET", "http://h/b/k");
        c.record("HEAD", "http://h/b/k");
        c.record("PUT", "http://h/b/k");
        c.record("POST", "http://h/b/k?uploads");
        c.record("PUT", "http://h/b/k?partNumber=1&uploadId=u");
        c.record("POST", "http://h/b/k?uploadId=u");
        c.record("DELETE", "http://h/b/k?uploadId=u");
        c.record("POST", "http://h/b?delete");
        let n = c.snapshot();
        assert_eq!(
            n,
            RequestCounts {
                list: 1,
                get: 1,
                head: 1,
                put: 1,
                create_multipart: 1,
                upload_part: 1,
                complete_multipart: 1,
                abort_multipart: 1,
                delete: 1,
                other: 0
            }
        );
        assert_eq!(n.total(), 9);
        assert_eq!(n.since(&n).total(), 0);
    }

    #[test]
    fn endpoints_and_prefixes_are_normalized() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:5055").unwrap(),
            "http://127.0.0.1:5055"
        );
        assert_eq!(
            normalize_endpoint("minio.example.com").unwrap(),
            "https://minio.example.com"
        );
        assert_eq!(normalize_endpoint("http://h:1/").unwrap(), "http://h:1");
        assert!(normalize_endpoint("ftp://h").is_err());
        assert_eq!(strip_userinfo("http://user:secret@h:1/p"), "http://h:1/p");
        assert_eq!(clean_prefix("//x/./databases/"), "x/databases");
        assert_eq!(dir_of(""), "");
        assert_eq!(dir_of("a/b"), "a/b/");
    }

    #[test]
    fn pem_encoding_is_standard_base64() {
        let pem = der_to_pem(b"hello world");
        assert_eq!(
            pem,
            b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n"
        );
        let pem = der_to_pem(b"ab");
        assert!(std::str::from_utf8(&pem).unwrap().contains("\nYWI=\n"));
    }

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

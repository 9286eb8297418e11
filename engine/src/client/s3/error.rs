//! Classification of S3 errors into [`ClientError`] variants with messages that say what to fix:
//! throttling, 5xx, timeouts and connection failures are retryable ([`ClientError::Unavailable`]);
//! missing buckets, refused credentials and other rejections are permanent. Messages name the
//! operation and object, never credentials.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::client::ClientError;

/// Maps an SDK error of `what` (e.g. `PutObject s3://bucket/key`) to a [`ClientError`];
/// `endpoint` names the store in messages about reaching it.
pub(super) fn classify<E>(
    err: SdkError<E, HttpResponse>,
    bucket: &str,
    what: &str,
    endpoint: &str,
) -> ClientError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let code = ctx.err().code().unwrap_or("");
            let msg = ctx.err().message().unwrap_or("");
            classify_service(bucket, what, status, code, msg)
        }
        SdkError::TimeoutError(_) => {
            ClientError::Unavailable(format!("{what}: no answer from {endpoint} in time"))
        }
        SdkError::DispatchFailure(d) => {
            let detail = error_chain(&err);
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
            error_chain(&err)
        )),
        SdkError::ConstructionFailure(_) => {
            let detail = error_chain(&err);
            credentials_problem(&detail)
                .unwrap_or_else(|| ClientError::Config(format!("{what}: {detail}")))
        }
        _ => ClientError::Other(format!("{what}: {}", error_chain(&err))),
    }
}

/// An error and its sources, `: `-separated, without the repetitions and `Debug` dumps of the
/// SDK's own formatting (these messages end up on the dashboard).
pub(super) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let s = e.to_string();
        if !s.is_empty() && !parts.last().is_some_and(|p| p.contains(&s)) {
            parts.push(s);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Missing or unusable credentials surface as a dispatch/construction failure of the identity
/// resolver; the SDK exposes no typed kind for it, so it is recognised by its message.
fn credentials_problem(detail: &str) -> Option<ClientError> {
    let lower = detail.to_ascii_lowercase();
    if lower.contains("no credentials")
        || lower.contains("credentials provider")
        || lower.contains("failed to load credentials")
        || lower.contains("loading credentials")
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
pub(super) fn classify_service(
    bucket: &str,
    what: &str,
    status: u16,
    code: &str,
    msg: &str,
) -> ClientError {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn credential_failures_are_denied_unless_they_time_out() {
        // As observed with no credentials and IMDS refusing (messages of aws-config 1.13).
        let e = credentials_problem("dispatch failure: other: an error occurred while loading credentials: failed to load IMDS session token: service error: request forbidden").unwrap();
        assert!(
            matches!(e, ClientError::Denied(_)) && e.to_string().contains("AWS_ACCESS_KEY_ID"),
            "{e}"
        );
        let e = credentials_problem("dispatch failure: other: an error occurred while loading credentials: credentials provider timed out after 5s").unwrap();
        assert!(e.is_retryable(), "{e}");
        assert!(credentials_problem("dispatch failure: io error: connection refused").is_none());
    }
}

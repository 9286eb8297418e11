//! Request accounting: every HTTP attempt the S3 client sends, by operation (what S3 bills),
//! counted by an SDK interceptor so that retries are included.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};

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
pub(super) struct Counters([AtomicU64; 10]);

impl Counters {
    pub(super) fn snapshot(&self) -> RequestCounts {
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
pub(super) struct CountRequests(pub(super) Arc<Counters>);

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

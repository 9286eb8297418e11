//! How the S3 client reaches the store: endpoint URLs as users type them, and the HTTPS client
//! that honours `AWS_CA_BUNDLE` (the Rust SDK itself ignores that variable; the AWS CLI and the
//! Go SDK honour it).

use aws_sdk_s3::config::SharedHttpClient;

use crate::client::ClientError;

/// Accepts `host:port` as Litestream does (http:// for local hosts, else https://).
pub(super) fn normalize_endpoint(endpoint: &str) -> Result<String, ClientError> {
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

pub(super) fn strip_userinfo(url: &str) -> String {
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
pub(super) fn https_client_with_ca_bundle(
    bundle: &std::path::Path,
) -> Result<SharedHttpClient, ClientError> {
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

    #[test]
    fn endpoints_are_normalized() {
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
}

//! The server's own HTTP requests: to the auth webhook (`--auth-url`) and to
//! the application's events receiver (`--events-url`). One request per fresh
//! HTTP/1.1 connection, over rustls for `https://`; the answer's body is read
//! up to a small limit.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

/// Most of an answer's body that is read.
pub const MAX_ANSWER: usize = 16 * 1024;

/// Where requests go: `http[s]://HOST[:PORT]/PATH`.
#[derive(Debug)]
pub struct Target {
    authority: String,
    path: String,
    /// For `https://`: the connector and the name the certificate must have.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Target {
    /// The target `url` names (given as `flag`); an https one trusts the
    /// public roots and the certificates in `ca`.
    pub fn new(url: &str, flag: &str, ca: Option<&std::path::Path>) -> Result<Target, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{flag} {}: {e}", redact_userinfo(url)))?;
        let (host, port, tls) = match (uri.scheme_str(), uri.host()) {
            (Some("http"), Some(host)) => (host, uri.port_u16().unwrap_or(80), false),
            (Some("https"), Some(host)) => (host, uri.port_u16().unwrap_or(443), true),
            _ => return Err(format!("{flag} {url}: use http[s]://HOST[:PORT]/PATH")),
        };
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(format!(
                "{flag} {}: credentials in the URL (user:password@) are never sent; \
                 put a shared secret in the path or query instead",
                redact_userinfo(url)
            ));
        }
        let tls = match tls {
            false => None,
            true => Some(tls_client(host, ca).map_err(|e| format!("{flag} {url}: {e}"))?),
        };
        Ok(Target {
            authority: format!("{host}:{port}"),
            path: uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned(),
            tls,
        })
    }

    /// Its path and query.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A request to it, `Host` set.
    pub fn request(&self, method: http::Method, path: &str) -> http::request::Builder {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority)
    }

    /// Sends `request` on a fresh connection; the answer's status and the
    /// first [`MAX_ANSWER`] bytes of its body. `Err` when no answer came.
    pub async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<(http::StatusCode, Bytes), ()> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(drop)?;
        match &self.tls {
            None => send(stream, request).await,
            Some((config, name)) => {
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), stream)
                    .await
                    .map_err(drop)?;
                send(stream, request).await
            }
        }
    }
}

async fn send<I>(
    io: I,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Bytes), ()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(drop)?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender.send_request(request).await.map_err(drop)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    conn.abort();
    Ok((status, body))
}

/// `url` with any `user:password@` replaced, for showing it.
pub fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://(not shown)@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// A TLS client for `host` that trusts the public roots and `ca`'s
/// certificates.
fn tls_client(
    host: &str,
    ca: Option<&std::path::Path>,
) -> Result<
    (
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
    String,
> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(ca) = ca {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host}: {e}"))?;
    Ok((Arc::new(config), name))
}

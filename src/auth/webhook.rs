//! The application's auth endpoint (`--auth-url`): asked once per request
//! whether a subscriber may read the channels it names, its answers kept
//! per credentials and channel within a byte budget.

use std::collections::hash_map::RandomState;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::cache::Bounded;
use crate::error::Error;
use crate::hub::Meter;

/// A subscriber's credentials, copied to ask the auth webhook with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// Its `Cookie` header.
    pub cookie: Option<Box<[u8]>>,
    /// Its `Authorization` header.
    pub authorization: Option<Box<[u8]>>,
}

impl Credentials {
    /// Who they are to the answer cache: a SHA-256 of both headers, so that
    /// what is kept per subscriber is small however large its cookies are.
    fn digest(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        for header in [&self.cookie, &self.authorization] {
            match header {
                Some(value) => {
                    digest.update([1]);
                    digest.update((value.len() as u64).to_be_bytes());
                    digest.update(value);
                }
                None => digest.update([0]),
            }
        }
        digest.finalize().into()
    }
}

/// The application's auth endpoint (`--auth-url`), asked whether a subscriber
/// may read the channels of a request, all of them in one call
/// (`?channel=a,b,c`): `2xx` allows them all, `401` and `403` refuse the
/// request, anything else (or no answer within the timeout) is `503`, and
/// never opens a channel. Answers are kept for `ttl`: an allowed channel per
/// credentials and channel, a refusal per credentials and the channels
/// asked, so re-polls do not ask again.
#[derive(Debug)]
pub struct Webhook {
    authority: String,
    path: String,
    /// For `https://`: the connector and the name the certificate must have.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    ttl: Duration,
    timeout: Duration,
    answers: Mutex<Answers>,
}

/// A webhook's answer, and until when it holds.
type Answer = (Result<(), Error>, tokio::time::Instant);
/// Answers by the credentials' digest followed by the channels asked
/// (comma-separated; one channel for an allowed one).
type Answers = Bounded<Box<[u8]>, Answer, RandomState>;

impl Webhook {
    /// A webhook at `url` (`http[s]://HOST[:PORT]/PATH`); an https one
    /// trusts the public roots and the certificates in `ca`. Its answers
    /// take at most `budget` bytes, counted in `meter`.
    pub fn new(
        url: &str,
        ttl: Duration,
        timeout: Duration,
        ca: Option<&std::path::Path>,
        budget: usize,
        meter: Meter,
    ) -> Result<Webhook, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("--auth-url {url}: {e}"))?;
        let (host, port, tls) = match (uri.scheme_str(), uri.host()) {
            (Some("http"), Some(host)) => (host, uri.port_u16().unwrap_or(80), false),
            (Some("https"), Some(host)) => (host, uri.port_u16().unwrap_or(443), true),
            _ => return Err(format!("--auth-url {url}: use http[s]://HOST[:PORT]/PATH")),
        };
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            // Not sent as Basic auth: the subscriber's own Authorization is
            // what the webhook is asked with.
            return Err(format!(
                "--auth-url {}: credentials in the URL (user:password@) are never sent; \
                 put a shared secret in the path or query instead",
                redact_userinfo(url)
            ));
        }
        let authority = format!("{host}:{port}");
        let tls = match tls {
            false => None,
            true => Some(tls_client(host, ca).map_err(|e| format!("--auth-url {url}: {e}"))?),
        };
        let path = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        Ok(Webhook {
            authority,
            path,
            tls,
            ttl,
            timeout,
            answers: Mutex::new(Answers::new(budget, meter)),
        })
    }

    /// Bytes the kept answers take.
    pub fn cached_bytes(&self) -> usize {
        self.answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes()
    }

    /// Whether `credentials` may subscribe to every one of `channels`: from
    /// the answers kept, else asked once for all the others.
    pub async fn check(&self, credentials: &Credentials, channels: &[&str]) -> Result<(), Error> {
        let who = credentials.digest();
        let key = |channels: &[&str]| -> Box<[u8]> {
            let mut key = who.to_vec();
            for (i, channel) in channels.iter().enumerate() {
                if i > 0 {
                    key.push(b',');
                }
                key.extend_from_slice(channel.as_bytes());
            }
            key.into()
        };
        let now = tokio::time::Instant::now();
        let held = |answers: &Answers, key: &[u8]| {
            answers
                .get(key)
                .filter(|(_, until)| *until > now)
                .map(|(answer, _)| answer.clone())
        };
        let mut ask = Vec::with_capacity(channels.len());
        {
            let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            for &channel in channels {
                match held(&answers, &key(&[channel])) {
                    Some(Ok(())) => {}
                    Some(refused) => return refused,
                    None => ask.push(channel),
                }
            }
            if ask.is_empty() {
                return Ok(());
            }
            if let Some(refused) = held(&answers, &key(&ask)) {
                return refused;
            }
        }
        let answer = tokio::time::timeout(self.timeout, self.ask(credentials, &ask.join(",")))
            .await
            .unwrap_or(Err(Error::AuthUnavailable));
        let until = now + self.ttl;
        let alive = |(_, until): &Answer| *until > now;
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        match &answer {
            Ok(()) => {
                for channel in &ask {
                    let key = key(&[channel]);
                    let size = key.len();
                    answers.insert(key, (Ok(()), until), size, alive);
                }
            }
            Err(Error::AuthUnavailable) => {}
            Err(refused) => {
                let key = key(&ask);
                let size = key.len();
                answers.insert(key, (Err(refused.clone()), until), size, alive);
            }
        }
        answer
    }

    async fn ask(&self, credentials: &Credentials, channels: &str) -> Result<(), Error> {
        use http_body_util::Empty;
        let down = |_| Error::AuthUnavailable;
        let joiner = if self.path.contains('?') { '&' } else { '?' };
        let mut request = http::Request::get(format!("{}{joiner}channel={channels}", self.path))
            .header(http::header::HOST, &self.authority);
        let forward = [
            (http::header::COOKIE, &credentials.cookie),
            (http::header::AUTHORIZATION, &credentials.authorization),
        ];
        for (name, value) in forward {
            if let Some(value) = value
                && let Ok(value) = http::HeaderValue::from_bytes(value)
            {
                request = request.header(name, value);
            }
        }
        let request = request.body(Empty::<bytes::Bytes>::new()).map_err(down)?;
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|_| Error::AuthUnavailable)?;
        let status = match &self.tls {
            None => send(stream, request).await?,
            Some((config, name)) => {
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|_| Error::AuthUnavailable)?;
                send(stream, request).await?
            }
        };
        match status.as_u16() {
            200..=299 => Ok(()),
            401 => Err(Error::InvalidToken),
            403 => Err(Error::Forbidden),
            _ => Err(Error::AuthUnavailable),
        }
    }
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

/// Sends `request` on a fresh HTTP/1.1 connection over `io`; its status.
async fn send<I>(
    io: I,
    request: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<http::StatusCode, Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|_| Error::AuthUnavailable)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|_| Error::AuthUnavailable)?;
    Ok(response.status())
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
            .map_err(|e| format!("--auth-ca {}: {e}", ca.display()))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("--auth-ca {}: {e}", ca.display()))?;
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

//! Who may subscribe and publish: JSON Web Tokens that list channel patterns.
//!
//! The token is checked with the `jsonwebtoken` crate against the operator's
//! key: an HMAC secret, or a PEM public key (RSA, EC or Ed25519), with only
//! that key's algorithms allowed, so neither `alg: none` nor an HMAC token
//! signed with the public key passes. `exp` is required and `nbf` checked,
//! with 5 s of leeway. A verified token is kept until it expires, so a
//! re-poll with it costs a hash lookup, not a signature check.
//!
//! Its `comethub` claim says what it may do:
//! `{"comethub": {"subscribe": ["room.*", "user.42"], "publish": ["room.*"]}}`.
//! A pattern is a channel name in which `*` stands for any run of characters.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::Error;

/// Seconds a token's `exp` and `nbf` may be off by.
pub const LEEWAY_SECS: u64 = 5;
/// Verified tokens, or webhook answers, kept at most.
const CACHED: usize = 65_536;

/// Makes room in a cache of at most [`CACHED`] entries: drops those no longer
/// `alive`, and everything if that is not enough.
fn make_room<K, V, S>(cache: &mut HashMap<K, V, S>, alive: impl Fn(&V) -> bool) {
    if cache.len() >= CACHED {
        cache.retain(|_, v| alive(v));
        if cache.len() >= CACHED {
            cache.clear();
        }
    }
}

/// Until when (seconds since the epoch) a token that expires at `exp` is
/// accepted: the one place the leeway is applied.
fn accepted_until(exp: u64) -> u64 {
    exp + LEEWAY_SECS
}

/// What a request wants to do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Long-poll or stream it.
    Subscribe,
    /// Publish on it.
    Publish,
}

/// Channel patterns: a name in which `*` stands for any run of characters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns(Vec<String>);

impl Patterns {
    /// Patterns as given (channel-name characters and `*`).
    pub fn new(patterns: Vec<String>) -> Patterns {
        Patterns(patterns)
    }

    /// Whether any pattern matches `channel`.
    pub fn matches(&self, channel: &str) -> bool {
        self.0
            .iter()
            .any(|p| glob(p.as_bytes(), channel.as_bytes()))
    }
}

/// Whether `pattern` (with `*` for any run) matches all of `name`: the usual
/// two-cursor walk that goes back only to the last star, so it takes at most
/// pattern × name steps however many stars there are.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What a verified token allows, until it expires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// Channels it may subscribe to.
    pub subscribe: Patterns,
    /// Channels it may publish to.
    pub publish: Patterns,
    /// When it expires (seconds since the epoch).
    pub exp: u64,
}

impl Grant {
    /// Whether it allows `action` on `channel`.
    pub fn allows(&self, action: Action, channel: &str) -> bool {
        match action {
            Action::Subscribe => self.subscribe.matches(channel),
            Action::Publish => self.publish.matches(channel),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    comethub: ChannelClaims,
}

#[derive(Deserialize, Default)]
struct ChannelClaims {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// The verifier: the key, what is checked, and the tokens already verified.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    verified: Mutex<HashMap<Box<str>, Arc<Grant>, BuildHasherDefault<TokenHasher>>>,
}

/// Hashes tokens for the verified-token cache, eight bytes at a step. Only
/// tokens whose signature checked out are ever kept, so no client can fill
/// the cache with colliding keys; a keyed SipHash over a 250-byte token cost
/// more than the rest of the lookup.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenHasher(u64);

impl std::hash::Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        for &b in chunks.remainder() {
            self.mix(u64::from(b));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl TokenHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `key`: the path of a PEM public key file (one that does
    /// not exist is refused if it ends in `.pem`), or else an HMAC secret (at
    /// least 32 bytes). `audience` and `issuer` are checked
    /// when given.
    pub fn new(
        key: &str,
        audience: Option<&str>,
        issuer: Option<&str>,
    ) -> Result<Verifier, String> {
        let (key, algorithms) = match std::fs::read(key) {
            Ok(pem) => public_key(&pem).map_err(|e| format!("--jwt-key {key}: {e}"))?,
            Err(_) if key.ends_with(".pem") => {
                return Err(format!("--jwt-key {key}: cannot read the key file"));
            }
            Err(_) if key.len() < 32 => {
                return Err(
                    "--jwt-key: an HMAC secret must be at least 32 bytes (or give a PEM \
                     public key file)"
                        .to_owned(),
                );
            }
            Err(_) => (
                DecodingKey::from_secret(key.as_bytes()),
                vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            ),
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = audience.is_some();
        if let Some(aud) = audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Verifier {
            key,
            validation,
            verified: Mutex::new(HashMap::default()),
        })
    }

    /// What `token` allows: from the tokens already verified, or checked now.
    pub fn grant(&self, token: &str) -> Result<Arc<Grant>, Error> {
        let now = now();
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(grant) = verified.get(token) {
            if accepted_until(grant.exp) > now {
                return Ok(grant.clone());
            }
            verified.remove(token);
            return Err(Error::InvalidToken);
        }
        drop(verified);
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| Error::InvalidToken)?;
        let claims = data.claims;
        let grant = Arc::new(Grant {
            subscribe: Patterns::new(claims.comethub.subscribe),
            publish: Patterns::new(claims.comethub.publish),
            exp: claims.exp,
        });
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        make_room(&mut verified, |g| accepted_until(g.exp) > now);
        verified.insert(token.into(), grant.clone());
        Ok(grant)
    }
}

/// A subscriber's credentials, copied to ask the auth webhook with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// Its `Cookie` header.
    pub cookie: Option<Box<[u8]>>,
    /// Its `Authorization` header.
    pub authorization: Option<Box<[u8]>>,
}

/// The application's auth endpoint (`--auth-url`), asked whether a subscriber
/// may read a channel: `2xx` allows, `401` and `403` refuse, anything else
/// (or no answer within the timeout) is `503`, and never opens the channel.
/// Answers are kept for `ttl` per credentials and channel, so re-polls do not
/// ask again.
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
    answers: Mutex<HashMap<(Credentials, Box<str>), Answer>>,
}

/// A webhook's answer for credentials and a channel, and until when it holds.
type Answer = (Result<(), Error>, tokio::time::Instant);

impl Webhook {
    /// A webhook at `url` (`http[s]://HOST[:PORT]/PATH`); an https one
    /// trusts the public roots and the certificates in `ca`.
    pub fn new(
        url: &str,
        ttl: Duration,
        timeout: Duration,
        ca: Option<&std::path::Path>,
    ) -> Result<Webhook, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("--auth-url {url}: {e}"))?;
        let (host, port, tls) = match (uri.scheme_str(), uri.host()) {
            (Some("http"), Some(host)) => (host, uri.port_u16().unwrap_or(80), false),
            (Some("https"), Some(host)) => (host, uri.port_u16().unwrap_or(443), true),
            _ => return Err(format!("--auth-url {url}: use http[s]://HOST[:PORT]/PATH")),
        };
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
            answers: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `credentials` may subscribe to `channel`.
    pub async fn check(&self, credentials: &Credentials, channel: &str) -> Result<(), Error> {
        let key = (credentials.clone(), Box::<str>::from(channel));
        let now = tokio::time::Instant::now();
        {
            let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((answer, until)) = answers.get(&key)
                && *until > now
            {
                return answer.clone();
            }
        }
        let answer = tokio::time::timeout(self.timeout, self.ask(credentials, channel))
            .await
            .unwrap_or(Err(Error::AuthUnavailable));
        if answer != Err(Error::AuthUnavailable) {
            let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            make_room(&mut answers, |(_, until)| *until > now);
            answers.insert(key, (answer.clone(), now + self.ttl));
        }
        answer
    }

    async fn ask(&self, credentials: &Credentials, channel: &str) -> Result<(), Error> {
        use http_body_util::Empty;
        let down = |_| Error::AuthUnavailable;
        let joiner = if self.path.contains('?') { '&' } else { '?' };
        let mut request = http::Request::get(format!("{}{joiner}channel={channel}", self.path))
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

/// How `comethub token` signs.
#[derive(Debug)]
pub enum Signer<'a> {
    /// HS256 with this secret.
    Secret(&'a str),
    /// This PEM private key's algorithm (RS256, ES256 or EdDSA).
    PrivateKey(&'a [u8]),
}

/// A token allowing `subscribe` and `publish` (patterns) for `ttl` seconds
/// from now.
pub fn mint(
    signer: Signer,
    subscribe: &[String],
    publish: &[String],
    ttl: u64,
    audience: Option<&str>,
    issuer: Option<&str>,
) -> Result<String, String> {
    use jsonwebtoken::EncodingKey;
    #[derive(serde::Serialize)]
    struct Minted<'a> {
        exp: u64,
        iat: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        iss: Option<&'a str>,
        comethub: MintedChannels<'a>,
    }
    #[derive(serde::Serialize)]
    struct MintedChannels<'a> {
        subscribe: &'a [String],
        publish: &'a [String],
    }
    let (key, alg) = match signer {
        Signer::Secret(secret) if secret.len() < 32 => {
            return Err("--key: an HMAC secret must be at least 32 bytes".to_owned());
        }
        Signer::Secret(secret) => (
            EncodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        ),
        Signer::PrivateKey(pem) => {
            if let Ok(key) = EncodingKey::from_ec_pem(pem) {
                (key, Algorithm::ES256)
            } else if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
                (key, Algorithm::RS256)
            } else if let Ok(key) = EncodingKey::from_ed_pem(pem) {
                (key, Algorithm::EdDSA)
            } else {
                return Err("--private-key: not a PEM private key (RSA, EC or Ed25519)".to_owned());
            }
        }
    };
    let now = now();
    let claims = Minted {
        exp: now + ttl,
        iat: now,
        aud: audience,
        iss: issuer,
        comethub: MintedChannels { subscribe, publish },
    };
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).map_err(|e| e.to_string())
}

/// A PEM public key and the algorithms it verifies.
fn public_key(pem: &[u8]) -> Result<(DecodingKey, Vec<Algorithm>), String> {
    use Algorithm::*;
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, vec![RS256, RS384, RS512, PS256, PS384, PS512]));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok((key, vec![ES256, ES384]));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, vec![EdDSA]));
    }
    Err("not a PEM public key (RSA, EC or Ed25519)".to_owned())
}

/// The moment a token that expires at `exp` stops being accepted.
pub fn instant(exp: u64) -> tokio::time::Instant {
    let left = accepted_until(exp).saturating_sub(now());
    tokio::time::Instant::now() + std::time::Duration::from_secs(left)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_names_with_stars_for_any_run() {
        let p = Patterns::new(vec!["room.*".into(), "user.42".into(), "*.notices".into()]);
        for yes in ["room.a", "room.", "room.a.b", "user.42", "team.notices"] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["room", "user.421", "user.4", "rooms.a", "notices", "x"] {
            assert!(!p.matches(no), "{no}");
        }
        assert!(Patterns::new(vec!["*".into()]).matches("anything"));
        assert!(!Patterns::default().matches("anything"));
    }
}

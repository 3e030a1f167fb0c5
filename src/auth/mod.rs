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

use std::hash::BuildHasherDefault;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::Error;

/// Seconds a token's `exp` and `nbf` may be off by.
pub const LEEWAY_SECS: u64 = 5;

mod cache;
mod webhook;

pub use crate::client::redact_userinfo;
pub use webhook::{Credentials, User, Webhook};

/// Verified tokens, with what they allow.
type Verified = cache::Bounded<Box<str>, Arc<Grant>, BuildHasherDefault<TokenHasher>>;

/// The bytes each of auth's caches may take: a sixteenth of the memory
/// bound, and at most 64 MiB.
pub fn cache_budget(max_memory: usize) -> usize {
    (max_memory / 16).min(64 << 20)
}

/// Until when (seconds since the epoch) a token that expires at `exp` is
/// accepted: the one place the leeway is applied.
fn accepted_until(exp: u64) -> u64 {
    exp + LEEWAY_SECS
}

/// The credentials of an `Authorization: Bearer CREDENTIALS` header. The
/// scheme's name is case-insensitive (RFC 9110 §11.1), and spaces may follow it.
pub fn bearer(authorization: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = authorization.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii_start()).filter(|c| !c.is_empty())
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
    /// Who it was given to (`sub`), when it names a member.
    pub sub: Option<smol_str::SmolStr>,
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
    sub: Option<String>,
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

/// What `--jwt-key` (and `comethub token --key`) names: never guessed from a
/// value that could be either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// A PEM public key file, which must be readable.
    File(std::path::PathBuf),
    /// An HMAC secret of at least [`MIN_SECRET`] bytes.
    Secret(String),
}

/// Shortest HMAC secret accepted, in bytes (HS256's own output size).
pub const MIN_SECRET: usize = 32;

impl JwtKey {
    /// `file:PATH` and `secret:VALUE` say which it is. A bare value that
    /// names a file, has a `/` or ends in `.pem` or `.key` is a key file,
    /// so that a mistyped path is refused instead of becoming the secret;
    /// anything else is a secret.
    pub fn parse(value: &str) -> Result<JwtKey, String> {
        let file = |path: &str| Ok(JwtKey::File(path.into()));
        if let Some(path) = value.strip_prefix("file:") {
            return file(path);
        }
        let secret = match value.strip_prefix("secret:") {
            Some(secret) => secret,
            None if value.contains('/')
                || value.ends_with(".pem")
                || value.ends_with(".key")
                || std::path::Path::new(value).exists() =>
            {
                return file(value);
            }
            None => value,
        };
        if secret.len() < MIN_SECRET {
            return Err(format!(
                "--jwt-key: an HMAC secret must be at least {MIN_SECRET} bytes (or name a \
                 PEM public key file, as file:PATH)"
            ));
        }
        Ok(JwtKey::Secret(secret.to_owned()))
    }
}

/// The verifier: the key, what is checked, and the tokens already verified.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    verified: Mutex<Verified>,
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
    /// A verifier for `key`, as [`JwtKey::parse`] reads it. `audience` and
    /// `issuer`, when given, are required in every token and checked. The
    /// tokens it has verified take at most `budget` bytes, counted in `meter`.
    pub fn new(
        key: &str,
        audience: Option<&str>,
        issuer: Option<&str>,
        budget: usize,
        meter: crate::hub::Meter,
    ) -> Result<Verifier, String> {
        let (key, algorithms) = match JwtKey::parse(key)? {
            JwtKey::File(path) => {
                let shown = path.display();
                let pem = std::fs::read(&path)
                    .map_err(|e| format!("--jwt-key {shown}: cannot read the key file: {e}"))?;
                public_key(&pem).map_err(|e| format!("--jwt-key {shown}: {e}"))?
            }
            JwtKey::Secret(secret) => (
                DecodingKey::from_secret(secret.as_bytes()),
                vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            ),
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = audience.is_some();
        // When set, the claim is required: a token without it is refused.
        let mut required = vec!["exp"];
        if let Some(aud) = audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Verifier {
            key,
            validation,
            verified: Mutex::new(Verified::new(budget, meter)),
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
            sub: claims
                .sub
                .filter(|s| crate::presence::valid_member(s))
                .map(Into::into),
        });
        // The token, and its patterns again in the grant.
        let size = 2 * token.len();
        let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        verified.insert(token.into(), grant.clone(), size, |g| {
            accepted_until(g.exp) > now
        });
        Ok(grant)
    }

    /// Bytes the verified tokens take.
    pub fn cached_bytes(&self) -> usize {
        self.verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes()
    }
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
        Signer::Secret(value) => match JwtKey::parse(value) {
            Ok(JwtKey::Secret(secret)) => (
                EncodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ),
            Ok(JwtKey::File(path)) => {
                return Err(format!(
                    "--key {}: names a key file, not a secret; sign with --private-key \
                     (the private half)",
                    path.display()
                ));
            }
            Err(_) => {
                return Err(format!(
                    "--key: an HMAC secret must be at least {MIN_SECRET} bytes"
                ));
            }
        },
        Signer::PrivateKey(pem) => {
            let pem = sec1_as_pkcs8(pem).unwrap_or_else(|| pem.to_vec());
            let pem = pem.as_slice();
            if let Ok(key) = EncodingKey::from_ec_pem(pem) {
                (key, Algorithm::ES256)
            } else if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
                (key, Algorithm::RS256)
            } else if let Ok(key) = EncodingKey::from_ed_pem(pem) {
                (key, Algorithm::EdDSA)
            } else {
                return Err(
                    "--private-key: not a PEM private key: use RSA (PKCS#1 'RSA PRIVATE \
                            KEY' or PKCS#8), EC P-256 (SEC1 'EC PRIVATE KEY' or PKCS#8) or \
                            Ed25519 (PKCS#8 'PRIVATE KEY')"
                        .to_owned(),
                );
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

/// An EC P-256 private key in SEC1 form (`EC PRIVATE KEY`, as `openssl
/// ecparam -genkey` writes it, perhaps after an `EC PARAMETERS` block) as
/// PKCS#8, the only form jsonwebtoken reads.
fn sec1_as_pkcs8(pem: &[u8]) -> Option<Vec<u8>> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    const BEGIN: &str = "-----BEGIN EC PRIVATE KEY-----";
    let text = std::str::from_utf8(pem).ok()?;
    let block = &text[text.find(BEGIN)?..];
    let key = p256::SecretKey::from_sec1_pem(block).ok()?;
    Some(key.to_pkcs8_pem(LineEnding::LF).ok()?.as_bytes().to_vec())
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

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer abc", "bearer abc", "BEARER  abc", "bEaReR abc"] {
            assert_eq!(bearer(header.as_bytes()), Some(&b"abc"[..]), "{header}");
        }
        for header in [
            "Bearerabc",
            "Basic abc",
            "Bearer",
            "Bearer ",
            "Bear abc",
            "",
        ] {
            assert_eq!(bearer(header.as_bytes()), None, "{header}");
        }
    }

    #[test]
    fn a_jwt_key_that_looks_like_a_path_is_never_taken_for_a_secret() {
        let long = "a-secret-of-more-than-thirty-two-bytes";
        assert_eq!(JwtKey::parse(long), Ok(JwtKey::Secret(long.into())));
        for path in [
            "/etc/comethub/keys/jwt-public.key",
            "keys/jwt-public-with-a-long-name",
            "jwt-public-key-with-a-long-name.pem",
            "jwt-public-key-with-a-long-name.key",
            "file:anything",
        ] {
            assert!(matches!(JwtKey::parse(path), Ok(JwtKey::File(_))), "{path}");
        }
        // A file that exists is a file, whatever its name.
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        assert!(matches!(JwtKey::parse(manifest), Ok(JwtKey::File(_))));
        // An explicit secret may hold a slash (base64 does).
        let slashed = "secret:c2VjcmV0/c2VjcmV0+c2VjcmV0/c2VjcmV0c2Vj";
        assert_eq!(
            JwtKey::parse(slashed),
            Ok(JwtKey::Secret(slashed["secret:".len()..].into()))
        );
        assert!(JwtKey::parse("short").is_err());
        assert!(JwtKey::parse("secret:short").is_err());
    }
}

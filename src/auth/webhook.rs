//! The application's auth endpoint (`--auth-url`): asked once per request
//! whether a subscriber may read the channels it names, its answers kept
//! per credentials and channel within a byte budget.

use std::collections::hash_map::RandomState;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use sha2::{Digest, Sha256};
use smol_str::SmolStr;

use super::cache::Bounded;
use crate::client::Target;
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
/// never opens a channel. A `2xx` whose body is a JSON object with a `user`
/// string names the subscriber (its presence identity). Answers are kept for
/// `ttl`: an allowed channel per credentials and channel, a refusal per
/// credentials and the channels asked, so re-polls do not ask again.
#[derive(Debug)]
pub struct Webhook {
    target: Target,
    ttl: Duration,
    timeout: Duration,
    answers: Mutex<Answers>,
}

/// Who the webhook says a subscriber is, when it says.
pub type User = Option<SmolStr>;
/// A webhook's answer, and until when it holds.
type Answer = (Result<User, Error>, tokio::time::Instant);
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
        let target = Target::new(url, "--auth-url", ca)?;
        Ok(Webhook {
            target,
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
    /// the answers kept, else asked once for all the others; who the
    /// webhook says they are, if it says.
    pub async fn check(&self, credentials: &Credentials, channels: &[&str]) -> Result<User, Error> {
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
        let mut user = None;
        {
            let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            for &channel in channels {
                match held(&answers, &key(&[channel])) {
                    Some(Ok(named)) => user = user.or(named),
                    Some(refused) => return refused,
                    None => ask.push(channel),
                }
            }
            if ask.is_empty() {
                return Ok(user);
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
            Ok(named) => {
                for channel in &ask {
                    let key = key(&[channel]);
                    let size = key.len() + named.as_ref().map_or(0, |u| u.len());
                    answers.insert(key, (Ok(named.clone()), until), size, alive);
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

    async fn ask(&self, credentials: &Credentials, channels: &str) -> Result<User, Error> {
        let down = |_| Error::AuthUnavailable;
        let path = self.target.path();
        let joiner = if path.contains('?') { '&' } else { '?' };
        let mut request = self.target.request(
            http::Method::GET,
            &format!("{path}{joiner}channel={channels}"),
        );
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
        let request = request.body(Full::new(Bytes::new())).map_err(down)?;
        let (status, body) = self
            .target
            .send(request)
            .await
            .map_err(|()| Error::AuthUnavailable)?;
        match status.as_u16() {
            200..=299 => Ok(user(&body)),
            401 => Err(Error::InvalidToken),
            403 => Err(Error::Forbidden),
            _ => Err(Error::AuthUnavailable),
        }
    }
}

/// The `user` a webhook's allowing answer names: a JSON object's `user`
/// string that may name a member; anything else names no one.
fn user(body: &[u8]) -> User {
    #[derive(serde::Deserialize)]
    struct Named {
        user: Option<String>,
    }
    let named: Named = serde_json::from_slice(body).ok()?;
    named
        .user
        .filter(|u| crate::presence::valid_member(u))
        .map(SmolStr::from)
}

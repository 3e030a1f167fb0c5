//! Who may do what: subscribing (open, a token, or the auth webhook, the
//! public channels excepted), publishing (the publish token or a token
//! allowing it), the operator's endpoints (the admin token).

use super::*;

/// What subscribing needs yet: when the token it was allowed by expires, and
/// the credentials to ask the auth webhook with.
type Admission = (Option<u64>, Option<Box<Credentials>>);

/// Who must show what to subscribe (`--subscribe-auth`, parsed by clap
/// straight into this: the one place its values are spelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SubscribeAuth {
    /// Anyone may.
    None,
    /// A JWT allowing the channel.
    Token,
    /// Whatever the application's auth webhook accepts.
    Webhook,
}

impl Routes {
    /// Subscribing to `channels`: open, unless `--subscribe-auth token` asks
    /// for a token allowing every one of them, or the auth webhook decides
    /// (the public channels excepted); returns when that token expires, or
    /// what to ask the webhook with ([`Routes::admitted`]).
    pub(super) fn may_subscribe(
        &self,
        req: &Request,
        query: &Query,
        channels: &Channels,
    ) -> Result<Admission, Error> {
        if self.settings.subscribe_auth == SubscribeAuth::None {
            return Ok((None, None));
        }
        let public = &self.settings.public_channels;
        let mut private = channels.names().filter(|c| !public.matches(c)).peekable();
        if private.peek().is_none() {
            return Ok((None, None));
        }
        match self.settings.subscribe_auth {
            SubscribeAuth::None => Ok((None, None)),
            SubscribeAuth::Token => Ok((
                Some(self.grant(req, query, Action::Subscribe, private)?),
                None,
            )),
            SubscribeAuth::Webhook => Ok((
                None,
                Some(Box::new(Credentials {
                    cookie: req.cookie.map(Box::from),
                    authorization: req.authorization.map(Box::from),
                })),
            )),
        }
    }

    /// Asks the auth webhook, when the route says to, whether the subscriber
    /// may read each of `channels` but the public ones: before a long-poll
    /// waits or a stream opens, so a refused or unanswered request never
    /// opens one.
    pub(super) async fn admitted(
        &self,
        ask: Option<Box<Credentials>>,
        channels: &Channels,
    ) -> Result<(), Error> {
        let Some(credentials) = ask else {
            return Ok(());
        };
        let Some(webhook) = &self.settings.webhook else {
            return Err(Error::AuthUnavailable);
        };
        let public = &self.settings.public_channels;
        let private: Vec<&str> = channels.names().filter(|c| !public.matches(c)).collect();
        Box::pin(webhook.check(&credentials, &private)).await
    }

    /// Publishing on `channel`: the publish token; with `--jwt-key`, a token
    /// allowing it will do as well.
    pub(super) fn may_publish(
        &self,
        req: &Request,
        query: &Query,
        channel: &str,
    ) -> Result<(), Error> {
        let by_token = self.authorize(req);
        if self.settings.verifier.is_none()
            || (by_token.is_ok() && self.settings.publish_token.is_some())
        {
            return by_token;
        }
        self.grant(req, query, Action::Publish, std::iter::once(channel))
            .map(|_| ())
    }

    /// Whether the request's JWT allows `action` on every one of `channels`:
    /// `401` without a valid one, `403` when it does not allow this on one of
    /// them; if it does, when it expires.
    fn grant<'c>(
        &self,
        req: &Request,
        query: &Query,
        action: Action,
        mut channels: impl Iterator<Item = &'c str>,
    ) -> Result<u64, Error> {
        let Some(verifier) = &self.settings.verifier else {
            return Err(Error::InvalidToken);
        };
        let token = self.token(req, query).ok_or(Error::InvalidToken)?;
        let grant = verifier.grant(token)?;
        if channels.all(|channel| grant.allows(action, channel)) {
            Ok(grant.exp)
        } else {
            Err(Error::Forbidden)
        }
    }

    /// The request's JWT: `Authorization: Bearer`, the token cookie, or `?token=`.
    fn token<'r>(&self, req: &'r Request, query: &'r Query) -> Option<&'r str> {
        let bearer = req.authorization.and_then(crate::auth::bearer);
        let cookie = || {
            let name = self.settings.jwt_cookie.as_deref()?.as_bytes();
            req.cookie?.split(|&b| b == b';').find_map(|pair| {
                let pair = pair.trim_ascii();
                let value = pair.strip_prefix(name)?.strip_prefix(b"=")?;
                Some(value)
            })
        };
        let bytes = bearer.or_else(cookie);
        match bytes {
            Some(b) => std::str::from_utf8(b).ok(),
            None => query.token.as_deref(),
        }
    }

    /// Publishing and deleting: the publish token, if one is set.
    pub(super) fn authorize(&self, req: &Request) -> Result<(), Error> {
        bearer(req, self.settings.publish_token.as_deref(), "publishing")
    }

    /// The operator's endpoints: the admin token, if one is set.
    pub(super) fn admin(&self, req: &Request) -> Result<(), Error> {
        bearer(req, self.settings.admin_token.as_deref(), "this endpoint")
    }
}

/// Checks `Authorization: Bearer TOKEN` against `token`, when there is one.
fn bearer(req: &Request, token: Option<&str>, what: &'static str) -> Result<(), Error> {
    let Some(token) = token else {
        return Ok(());
    };
    let given = req
        .authorization
        .and_then(crate::auth::bearer)
        .unwrap_or_default();
    if constant_time_eq(given, token.as_bytes()) {
        Ok(())
    } else {
        Err(Error::Unauthorized(what))
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

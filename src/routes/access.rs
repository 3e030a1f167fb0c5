//! Who may do what: subscribing (open, a token, or the auth webhook, the
//! public channels excepted), publishing (the publish token or a token
//! allowing it), the operator's endpoints (the admin token).

use super::*;

/// What subscribing needs yet: when the token it was allowed by expires, and
/// who the subscriber is or what to ask the auth webhook with.
type Admission = (Option<u64>, Option<Box<Admit>>);

/// Who a subscriber is (its presence identity: a token's `sub`, or the
/// `client=` it gives where no auth applies), or the credentials to ask the
/// auth webhook with, which names it.
#[derive(Debug)]
pub struct Admit {
    credentials: Option<Credentials>,
    member: Option<SmolStr>,
}

/// The channel whose access rules a channel follows: a presence channel
/// (`$presence:C`) is read by whoever may read C.
fn ruled_by(channel: &str) -> &str {
    crate::presence::of(channel).unwrap_or(channel)
}

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

impl Admit {
    fn named(member: SmolStr) -> Admit {
        Admit {
            credentials: None,
            member: Some(member),
        }
    }
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
        let claimed = || -> Result<Admission, Error> {
            if self.settings.presence.is_none() {
                return Ok((None, None));
            }
            let member = query.client()?;
            Ok((None, member.map(|member| Box::new(Admit::named(member)))))
        };
        if self.settings.subscribe_auth == SubscribeAuth::None {
            return claimed();
        }
        let public = &self.settings.public_channels;
        let mut private = channels
            .names()
            .map(ruled_by)
            .filter(|c| !public.matches(c))
            .peekable();
        if private.peek().is_none() {
            return claimed();
        }
        match self.settings.subscribe_auth {
            SubscribeAuth::None => claimed(),
            SubscribeAuth::Token => {
                let grant = self.grant(req, query, Action::Subscribe, private)?;
                let member = grant
                    .sub
                    .clone()
                    .filter(|_| self.settings.presence.is_some());
                Ok((Some(grant.exp), member.map(|m| Box::new(Admit::named(m)))))
            }
            SubscribeAuth::Webhook => Ok((
                None,
                Some(Box::new(Admit {
                    credentials: Some(Credentials {
                        cookie: req.cookie.map(Box::from),
                        authorization: req.authorization.map(Box::from),
                    }),
                    member: None,
                })),
            )),
        }
    }

    /// Asks the auth webhook, when the route says to, whether the subscriber
    /// may read each of `channels` but the public ones: before a long-poll
    /// waits or a stream opens, so a refused or unanswered request never
    /// opens one. Who the subscriber is, if known.
    pub(super) async fn admitted(
        &self,
        admit: Option<Box<Admit>>,
        channels: &Channels,
    ) -> Result<Option<SmolStr>, Error> {
        let Some(admit) = admit else {
            return Ok(None);
        };
        let Some(credentials) = admit.credentials else {
            return Ok(admit.member);
        };
        let Some(webhook) = &self.settings.webhook else {
            return Err(Error::AuthUnavailable);
        };
        let public = &self.settings.public_channels;
        let mut private: Vec<&str> = channels
            .names()
            .map(ruled_by)
            .filter(|c| !public.matches(c))
            .collect();
        private.dedup();
        let user = Box::pin(webhook.check(&credentials, &private)).await?;
        Ok(user.filter(|_| self.settings.presence.is_some()))
    }

    /// Publishing on `channels`: the publish token; with `--jwt-key`, a
    /// token allowing every one of them will do as well.
    pub(super) fn may_publish(
        &self,
        req: &Request,
        query: &Query,
        channels: &[String],
    ) -> Result<(), Error> {
        let by_token = self.authorize(req);
        if self.settings.verifier.is_none()
            || (by_token.is_ok() && self.settings.publish_token.is_some())
        {
            return by_token;
        }
        self.grant(
            req,
            query,
            Action::Publish,
            channels.iter().map(String::as_str),
        )
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
    ) -> Result<Arc<crate::auth::Grant>, Error> {
        let Some(verifier) = &self.settings.verifier else {
            return Err(Error::InvalidToken);
        };
        let token = self.token(req, query).ok_or(Error::InvalidToken)?;
        let grant = verifier.grant(token)?;
        if channels.all(|channel| grant.allows(action, channel)) {
            Ok(grant)
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

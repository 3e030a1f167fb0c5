//! Command-line flags and their defaults.
//!
//! One struct serves the binary (parsed by clap) and the library (built with
//! [`Config::default`] and adjusted field by field, as the tests do).

use crate::routes::SubscribeAuth;
use std::time::Duration;

use clap::Parser;

/// Default address to listen on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
/// Default long-poll timeout, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Default number of messages a channel keeps.
pub const DEFAULT_HISTORY: usize = 128;
/// Default age, in seconds, after which a message leaves the history.
pub const DEFAULT_HISTORY_AGE_SECS: u64 = 300;
/// Default largest message, in bytes.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;
/// Default time a client has to send its request headers, in seconds.
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default largest JSON batch, in bytes.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1024 * 1024;

/// How the server runs. Every field has a documented default.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "comethub",
    version,
    about = "Async long-poll publish/subscribe HTTP server"
)]
pub struct Config {
    /// Address to listen on: IP:PORT (port 0: any free port) or unix:PATH;
    /// repeat for several. Under systemd socket activation the inherited
    /// sockets are served instead.
    #[arg(long, default_value = DEFAULT_LISTEN, action = clap::ArgAction::Append)]
    pub listen: Vec<crate::listen::Address>,

    /// Take publishes and deletes only on this listener (an address exactly
    /// as given to --listen, such as unix:/run/comethub/publish.sock);
    /// repeat for several. The others answer them 403.
    #[arg(long, action = clap::ArgAction::Append)]
    pub publish_on: Vec<crate::listen::Address>,

    /// Permissions of the Unix sockets made for --listen unix:PATH (octal).
    #[arg(long, default_value = "660", value_parser = octal)]
    pub unix_mode: u32,

    /// Longest time a long-poll waits before answering 204, in seconds.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_SECS)]
    pub timeout: u64,

    /// Messages each channel keeps for subscribers that resume with `since`.
    #[arg(long, default_value_t = DEFAULT_HISTORY)]
    pub history: usize,

    /// Seconds after which a message leaves the history.
    #[arg(long, default_value_t = DEFAULT_HISTORY_AGE_SECS)]
    pub history_age: u64,

    /// Seconds a publish's Idempotency-Key is remembered: a retry with the
    /// same key on the same channel within it publishes nothing and answers
    /// the first id. Default: the history age.
    #[arg(long)]
    pub idempotency_window: Option<u64>,

    /// Largest message accepted by /publish, in bytes (larger ones get 413).
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE)]
    pub max_message: usize,

    /// Largest `format=json` answer, in bytes (suffixes K, M, G): a batch stops
    /// before the message that would pass it, and its `last_id` says where the
    /// next poll continues. A single larger message still goes out alone.
    #[arg(long, default_value = "1M", value_parser = bytes_size)]
    pub max_batch_bytes: usize,

    /// PEM certificate chain: serve HTTPS (HTTP/2 and HTTP/1.1, by ALPN) on
    /// the listener. Read again on SIGHUP. Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Most streams (requests at once) one HTTP/2 connection may open.
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_streams: u32,

    /// Most channels one subscription may name (`channel=a,b,c`); more get 400.
    #[arg(long, default_value_t = 64)]
    pub max_channels_per_request: usize,

    /// Most memory all retained messages may take, with their type, encodings
    /// and bookkeeping (suffixes K, M, G). Past it the oldest messages across
    /// channels are evicted (resuming subscribers get X-Gap); a publish that
    /// eviction cannot make room for gets 503. Default: a quarter of the
    /// machine's (or cgroup's) memory.
    #[arg(long, value_parser = bytes_size)]
    pub max_memory: Option<usize>,

    /// Value of Access-Control-Allow-Origin on every answer.
    #[arg(long, default_value = "*")]
    pub cors_origin: String,

    /// Seconds a client has to send its request headers (slowloris guard).
    #[arg(long, default_value_t = DEFAULT_HEADER_TIMEOUT_SECS)]
    pub header_timeout: u64,

    /// Seconds a client may take no byte of an answer or stream before it is
    /// disconnected; one that keeps reading, however slowly, takes as long as
    /// it needs.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub write_timeout: u64,

    /// Largest request head (request line and headers), in bytes; larger gets 431.
    #[arg(long, default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(8192..))]
    pub max_header_bytes: u32,

    /// Most open connections; past it new ones get 503 and are closed (0: open-files limit minus a margin).
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,

    /// Most waiting subscribers and event streams in all; past it /subscribe and /events answer 503 (0: no limit but connections).
    #[arg(long, default_value_t = 0)]
    pub max_subscribers: usize,

    /// Most channels held at once; past it a new channel gets 503.
    #[arg(long, default_value_t = 100_000)]
    pub max_channels: usize,

    /// Token that /publish requires as `Authorization: Bearer TOKEN` (none: publishing is open).
    #[arg(long, env = "COMETHUB_PUBLISH_TOKEN")]
    pub publish_token: Option<String>,

    /// Token that /stats, /metrics, /channels/C and deleting a channel require
    /// as `Authorization: Bearer TOKEN` (none: they are open).
    #[arg(long, env = "COMETHUB_ADMIN_TOKEN")]
    pub admin_token: Option<String>,

    /// Key that JWTs are checked with: a PEM public key file (RSA, EC or
    /// Ed25519), or else an HMAC secret of at least 32 bytes. With it,
    /// publishing needs a token with publish rights on the channel (or the
    /// publish token).
    #[arg(long, env = "COMETHUB_JWT_KEY")]
    pub jwt_key: Option<String>,

    /// `aud` a token must carry, when set.
    #[arg(long)]
    pub jwt_audience: Option<String>,

    /// `iss` a token must carry, when set.
    #[arg(long)]
    pub jwt_issuer: Option<String>,

    /// Cookie a token may also come in (besides `Authorization: Bearer` and `?token=`).
    #[arg(long)]
    pub jwt_cookie: Option<String>,

    /// Who must show what to subscribe: `none`; `token` (a JWT allowing the
    /// channel); or `webhook` (whatever `--auth-url` accepts). The
    /// `--public-channels` are open either way.
    #[arg(long, default_value = "none", value_enum)]
    pub subscribe_auth: crate::routes::SubscribeAuth,

    /// The application's auth endpoint (`http[s]://HOST[:PORT]/PATH`) for
    /// `--subscribe-auth webhook`: asked with the subscriber's cookies and
    /// Authorization and `?channel=C`; 2xx allows, 401/403 refuse.
    #[arg(long)]
    pub auth_url: Option<String>,

    /// PEM certificates (a private CA) to trust for an https --auth-url,
    /// besides the public roots.
    #[arg(long)]
    pub auth_ca: Option<std::path::PathBuf>,

    /// Seconds a webhook's answer is kept per credentials and channel.
    #[arg(long, default_value_t = 30)]
    pub auth_cache_ttl: u64,

    /// Seconds the webhook has to answer before the subscriber gets 503.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    pub auth_timeout: u64,

    /// Channels anyone may subscribe to under `--subscribe-auth token`
    /// (patterns, `*` for any run of characters; repeat the flag or separate by commas).
    #[arg(long, value_delimiter = ',')]
    pub public_channels: Vec<String>,

    /// Channels that keep presence (patterns, `*` for any run of
    /// characters; repeat the flag or separate by commas): who is on them,
    /// at `/channels/C/presence` and on `$presence:C`.
    #[arg(long, value_delimiter = ',')]
    pub presence: Vec<String>,

    /// Seconds a member stays present after its last poll or stream ended,
    /// so that re-polls and reconnects are one presence.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub presence_grace: u64,

    /// The application's events receiver (`http[s]://HOST[:PORT]/PATH`):
    /// sent batched JSON POSTs when channels are occupied and vacated and
    /// members join and leave.
    #[arg(long)]
    pub events_url: Option<String>,

    /// The secret the events are signed with (HMAC-SHA256 in the
    /// Comethub-Signature header).
    #[arg(long, env = "COMETHUB_EVENTS_SECRET")]
    pub events_secret: Option<String>,

    /// Also send an event for every message published (`true` or `false`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub events_publishes: bool,

    /// Seconds of silence after which an event stream gets a `: ping` comment.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping: u64,

    /// Single-threaded reactors serving connections, all sharing one hub (the
    /// seed's Jetty pattern); 1 keeps everything on one thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,

    /// Cluster mode: keep channels in Redis (`redis://HOST:PORT[/DB]`), shared
    /// by every instance pointed at it; `redis+sentinel://HOST:PORT[,…]/MASTER`
    /// finds the master through Sentinel, `redis+cluster://HOST:PORT[,…]`
    /// uses a Redis Cluster. Without it, channels live in memory.
    #[arg(long, env = "COMETHUB_REDIS")]
    pub redis: Option<String>,

    /// Cluster mode: answer a publish 200 only once this many Redis
    /// replicas have its message (WAIT); if they do not confirm within a
    /// second the publisher gets 503 and may retry with its Idempotency-Key.
    #[arg(long, default_value_t = 0)]
    pub redis_replicas: u32,

    /// A TOML file of settings, one key per flag with the flag's name
    /// (`listen = ["127.0.0.1:8000"]`, `max-message = 65536`); flags and
    /// environment variables override it.
    #[arg(long, env = "COMETHUB_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Print the effective configuration (flags, environment and file) as
    /// TOML, secrets left out, and exit.
    #[arg(long)]
    pub print_config: bool,

    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Log format: `text` or `json`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Parses permissions in octal (`660`, `0600`).
fn octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s}: use octal permissions such as 660"))
}

/// Parses a size in bytes: digits, optionally followed by `K`, `M` or `G`
/// (powers of 1024; a trailing `B` or `iB` is allowed).
pub fn bytes_size(value: &str) -> Result<usize, String> {
    let upper = value.trim().to_ascii_uppercase();
    let number = upper.trim_end_matches("IB").trim_end_matches('B');
    let (digits, shift) = match number.as_bytes().last() {
        Some(b'K') => (&number[..number.len() - 1], 10),
        Some(b'M') => (&number[..number.len() - 1], 20),
        Some(b'G') => (&number[..number.len() - 1], 30),
        _ => (number, 0),
    };
    let n: usize = digits
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a size such as 65536, 512K, 64M or 2G"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{value:?} is too large"))
}

/// What the binary can do besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Prints a token for these channels and this lifetime (HS256, or the
    /// private key's algorithm).
    Token(TokenArgs),
}

/// `comethub token`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The HMAC secret the server checks tokens with (its `--jwt-key`).
    #[arg(
        long,
        env = "COMETHUB_JWT_KEY",
        required_unless_present = "private_key"
    )]
    pub key: Option<String>,
    /// Or a PEM private key file (RSA: RS256, EC P-256: ES256, Ed25519:
    /// EdDSA), whose public half is the server's `--jwt-key`.
    #[arg(long, conflicts_with = "key")]
    pub private_key: Option<std::path::PathBuf>,
    /// Channels (patterns) the token may subscribe to; repeat or separate by commas.
    #[arg(long, value_delimiter = ',')]
    pub subscribe: Vec<String>,
    /// Channels (patterns) the token may publish to; repeat or separate by commas.
    #[arg(long, value_delimiter = ',')]
    pub publish: Vec<String>,
    /// Seconds the token is valid for.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
    /// `aud` to put in it.
    #[arg(long)]
    pub audience: Option<String>,
    /// `iss` to put in it.
    #[arg(long)]
    pub issuer: Option<String>,
}

/// Flags whose values are secrets (a Redis URL may hold a password): never
/// printed by `--print-config`.
const SECRETS: [&str; 5] = [
    "publish-token",
    "admin-token",
    "jwt-key",
    "redis",
    "events-secret",
];
/// Flags that are not settings.
const NOT_SETTINGS: [&str; 4] = ["config", "print-config", "help", "version"];

impl Config {
    /// The configuration from the command line, the environment and the
    /// `--config` file, in that order of precedence; with the parsed
    /// arguments, for [`to_toml`].
    pub fn load_from(
        args: Vec<std::ffi::OsString>,
    ) -> Result<(Config, clap::ArgMatches), LoadError> {
        use clap::parser::ValueSource;
        use clap::{CommandFactory, FromArgMatches};
        let command = Config::command();
        let matches = command.clone().try_get_matches_from(&args)?;
        let file = matches.get_one::<std::path::PathBuf>("config").cloned();
        let Some(file) = file.filter(|_| matches.subcommand().is_none()) else {
            return Ok((Config::from_arg_matches(&matches)?, matches));
        };
        let shown = file.display();
        let text = std::fs::read_to_string(&file)
            .map_err(|e| LoadError::File(format!("--config {shown}: {e}")))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e| LoadError::File(format!("--config {shown}: {e}")))?;
        let mut from_file: Vec<std::ffi::OsString> = Vec::new();
        for (key, value) in &table {
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .filter(|_| !NOT_SETTINGS.contains(&key.as_str()))
                .ok_or_else(|| LoadError::File(format!("--config {shown}: no setting `{key}`")))?;
            let given = matches!(
                matches.value_source(arg.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if given {
                continue;
            }
            let values = match value {
                toml::Value::Array(items) => items.iter().collect(),
                one => vec![one],
            };
            for value in values {
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(n) => n.to_string(),
                    toml::Value::Float(x) => x.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    _ => {
                        return Err(LoadError::File(format!(
                            "--config {shown}: `{key}` must be a string, a number or a list of them"
                        )));
                    }
                };
                from_file.push(format!("--{key}").into());
                from_file.push(text.into());
            }
        }
        let mut all = Vec::with_capacity(args.len() + from_file.len());
        all.extend(args.first().cloned());
        all.extend(from_file);
        all.extend(args.into_iter().skip(1));
        let matches = command.try_get_matches_from(all)?;
        Ok((Config::from_arg_matches(&matches)?, matches))
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// A flag or value clap refuses (it prints its own message).
    Args(clap::Error),
    /// The `--config` file.
    File(String),
}

impl From<clap::Error> for LoadError {
    fn from(err: clap::Error) -> LoadError {
        LoadError::Args(err)
    }
}

/// The effective configuration of `matches` as TOML, in the form
/// `--config` reads; secrets are not shown.
pub fn to_toml(matches: &clap::ArgMatches) -> String {
    use clap::CommandFactory;
    let mut out = String::from("# comethub --print-config\n");
    for arg in Config::command().get_arguments() {
        let Some(key) = arg.get_long().filter(|k| !NOT_SETTINGS.contains(k)) else {
            continue;
        };
        let values: Vec<String> = matches
            .get_raw(arg.get_id().as_str())
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if values.is_empty() {
            out.push_str(&format!("# {key} = (not set)\n"));
            continue;
        }
        if SECRETS.contains(&key) {
            out.push_str(&format!("# {key} = (set, not shown)\n"));
            continue;
        }
        let value = |s: &String| -> toml::Value {
            if key == "auth-url" {
                return toml::Value::String(crate::auth::redact_userinfo(s));
            }
            match (s.parse::<i64>(), s.parse::<bool>()) {
                (Ok(n), _) => toml::Value::Integer(n),
                (_, Ok(b)) => toml::Value::Boolean(b),
                _ => toml::Value::String(s.clone()),
            }
        };
        let value = if matches!(arg.get_action(), clap::ArgAction::Append) {
            toml::Value::Array(values.iter().map(value).collect())
        } else {
            value(&values[0])
        };
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["comethub"])
    }
}

impl Config {
    /// The long-poll timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout)
    }

    /// The history age as a duration.
    pub fn history_age(&self) -> Duration {
        Duration::from_secs(self.history_age)
    }

    /// How long idempotency keys are remembered.
    pub fn idempotency_window(&self) -> Duration {
        Duration::from_secs(self.idempotency_window.unwrap_or(self.history_age))
    }

    /// Refuses a configuration that would quietly serve something other than
    /// what was asked: the server does not start on it (exit code 2).
    pub fn check(&self) -> Result<(), String> {
        if let Some(token) = &self.publish_token
            && token.trim().is_empty()
        {
            return Err(
                "--publish-token (or COMETHUB_PUBLISH_TOKEN) is empty: it would \
                        leave publishing open; give a token, or leave both out"
                    .to_owned(),
            );
        }
        if let Some(token) = &self.admin_token
            && token.trim().is_empty()
        {
            return Err(
                "--admin-token (or COMETHUB_ADMIN_TOKEN) is empty: it would leave \
                 /stats, /metrics, /channels and deleting open; give a token, or leave both out"
                    .to_owned(),
            );
        }
        if self.redis_replicas > 0 && self.redis.is_none() {
            return Err(
                "--redis-replicas needs --redis: in memory there are no replicas".to_owned(),
            );
        }
        if (self.subscribe_auth == SubscribeAuth::Webhook) != self.auth_url.is_some() {
            return Err(
                "--subscribe-auth webhook and --auth-url go together: give both or neither"
                    .to_owned(),
            );
        }
        if self.subscribe_auth == SubscribeAuth::Token && self.jwt_key.is_none() {
            return Err("--subscribe-auth token needs --jwt-key to check tokens with".to_owned());
        }
        if self.jwt_key.is_none()
            && (self.jwt_audience.is_some()
                || self.jwt_issuer.is_some()
                || self.jwt_cookie.is_some())
        {
            return Err("--jwt-audience, --jwt-issuer and --jwt-cookie need --jwt-key".to_owned());
        }
        let origin = &self.cors_origin;
        if origin.is_empty() || http::HeaderValue::from_str(origin).is_err() {
            return Err(format!(
                "--cors-origin {origin:?} cannot be sent as a header: use '*' or an origin such as https://example.com"
            ));
        }
        if self.max_message == 0 {
            return Err("--max-message 0 would refuse every message".to_owned());
        }
        if let Some(max) = self.max_memory
            && max < 4 * self.max_message.max(256 * 1024)
        {
            return Err(format!(
                "--max-memory {max} is too small: it must hold at least four of the \
                 largest messages (--max-message {}) and 1 MiB",
                self.max_message
            ));
        }
        if self.max_channels_per_request == 0 {
            return Err("--max-channels-per-request 0 would allow no subscription".to_owned());
        }
        if self.max_batch_bytes == 0 {
            return Err("--max-batch-bytes 0 would answer no batch".to_owned());
        }
        if self.events_secret.is_some() && self.events_url.is_none() {
            return Err("--events-secret needs --events-url to send events to".to_owned());
        }
        if self
            .events_secret
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(
                "--events-secret is empty: the events would be signed with nothing".to_owned(),
            );
        }
        Ok(())
    }

    /// The memory bound: the flag, or a quarter of the memory available.
    pub fn max_memory(&self) -> usize {
        self.max_memory.unwrap_or_else(|| {
            let available = crate::os::memory_available().unwrap_or(4 << 30);
            usize::try_from(available / 4).unwrap_or(usize::MAX)
        })
    }

    /// The auth webhook `--auth-url` names, if any; what it keeps is
    /// counted in `meter`.
    pub fn webhook(
        &self,
        meter: crate::hub::Meter,
    ) -> Result<Option<crate::auth::Webhook>, String> {
        let Some(url) = &self.auth_url else {
            return Ok(None);
        };
        crate::auth::Webhook::new(
            url,
            Duration::from_secs(self.auth_cache_ttl),
            Duration::from_secs(self.auth_timeout),
            self.auth_ca.as_deref(),
            crate::auth::cache_budget(self.max_memory()),
            meter,
        )
        .map(Some)
    }

    /// Presence on the channels `--presence` names, if any; its members are
    /// counted in `meter`.
    pub fn presence(
        &self,
        meter: crate::hub::Meter,
    ) -> Option<std::sync::Arc<crate::presence::Presence>> {
        (!self.presence.is_empty()).then(|| {
            crate::presence::Presence::new(
                crate::auth::Patterns::new(self.presence.clone()),
                Duration::from_secs(self.presence_grace),
                crate::auth::cache_budget(self.max_memory()),
                meter,
            )
        })
    }

    /// The events sender `--events-url` asks for, if any; its queue is
    /// counted in `meter`.
    pub fn events(
        &self,
        meter: crate::hub::Meter,
    ) -> Result<Option<crate::events::Events>, String> {
        let Some(url) = &self.events_url else {
            return Ok(None);
        };
        crate::events::Events::new(
            url,
            self.events_secret.as_deref(),
            self.events_publishes,
            crate::auth::cache_budget(self.max_memory()),
            meter,
        )
        .map(Some)
    }

    /// The token verifier `--jwt-key` asks for, if any; what it keeps is
    /// counted in `meter`.
    pub fn verifier(
        &self,
        meter: crate::hub::Meter,
    ) -> Result<Option<crate::auth::Verifier>, String> {
        let Some(key) = &self.jwt_key else {
            return Ok(None);
        };
        crate::auth::Verifier::new(
            key,
            self.jwt_audience.as_deref(),
            self.jwt_issuer.as_deref(),
            crate::auth::cache_budget(self.max_memory()),
            meter,
        )
        .map(Some)
    }

    /// The header-read timeout as a duration.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes_and_refuse_nonsense() {
        assert_eq!(bytes_size("65536"), Ok(65536));
        assert_eq!(bytes_size("512K"), Ok(512 << 10));
        assert_eq!(bytes_size("64m"), Ok(64 << 20));
        assert_eq!(bytes_size("2GiB"), Ok(2 << 30));
        assert_eq!(bytes_size("1MB"), Ok(1 << 20));
        for bad in ["", "M", "-1", "1.5M", "12Q", "99999999999999999999G"] {
            assert!(bytes_size(bad).is_err(), "{bad:?}");
        }
    }
}

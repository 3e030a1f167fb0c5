//! Where the Redis is, and the connections to it: one server, the master a
//! set of sentinels names, or a Redis Cluster. [`Con`] speaks to either kind
//! of deployment the same way, so the store's scripts and commands are
//! written once; what differs (following a channel's topic, `WAIT`) is
//! decided here.
//!
//! On a cluster a channel's keys and topic carry its name as hash tag, so
//! they live on one shard: its script runs there and announces with
//! `SPUBLISH`, and instances follow it with `SSUBSCRIBE` on that shard only.
//! The cluster connection keeps one connection per node, follows `MOVED` and
//! `ASK`, and finds a promoted replica after a failover by itself.

use std::time::Duration;

use redis::aio::{AsyncPushSender, ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion,
    RedisConnectionInfo, RedisFuture, RedisResult, Value,
};
use tokio::sync::Mutex as AsyncMutex;

use crate::stats::Shard;

/// Where the Redis is.
pub enum Target {
    /// One server.
    Server(redis::Client),
    /// The master the sentinels name, asked again at every connection, so a
    /// failover is followed.
    Sentinel {
        /// The sentinels.
        sentinel: AsyncMutex<Sentinel>,
        /// The master's name.
        master: String,
    },
    /// A Redis Cluster, from any of these nodes (the rest are discovered).
    Cluster(Vec<ConnectionInfo>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Server(_) => f.write_str("Target::Server"),
            Target::Sentinel { master, .. } => write!(f, "Target::Sentinel({master})"),
            Target::Cluster(nodes) => write!(f, "Target::Cluster({} nodes)", nodes.len()),
        }
    }
}

fn resp3(info: ConnectionInfo) -> ConnectionInfo {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    info.set_redis_settings(settings)
}

impl Target {
    /// Reads `redis://…`, `redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER` or
    /// `redis+cluster://HOST:PORT[,HOST:PORT…]`.
    pub fn new(url: &str) -> Result<Target, String> {
        let bad = |e: &dyn std::fmt::Display| format!("bad --redis URL: {e}");
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (hosts, master) = rest
                .split_once('/')
                .filter(|(h, m)| !h.is_empty() && !m.is_empty() && !m.contains('/'))
                .ok_or_else(|| bad(&"use redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER_NAME"))?;
            let sentinels: Vec<String> = hosts.split(',').map(|h| format!("redis://{h}")).collect();
            let sentinel = Sentinel::build(sentinels).map_err(|e| bad(&e))?;
            return Ok(Target::Sentinel {
                sentinel: AsyncMutex::new(sentinel),
                master: master.to_owned(),
            });
        }
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let hosts = rest.trim_end_matches('/');
            if hosts.is_empty() || hosts.contains('/') {
                return Err(bad(&"use redis+cluster://HOST:PORT[,HOST:PORT...]"));
            }
            let nodes = hosts
                .split(',')
                .map(|h| format!("redis://{h}").into_connection_info().map(resp3))
                .collect::<RedisResult<Vec<_>>>()
                .map_err(|e| bad(&e))?;
            return Ok(Target::Cluster(nodes));
        }
        let info = url.into_connection_info().map_err(|e| bad(&e))?;
        redis::Client::open(resp3(info))
            .map(Target::Server)
            .map_err(|e| bad(&e))
    }

    /// Connects: one connection that hands what Redis pushes to `push`, and
    /// `extra` more that take a longer `extra_timeout` per command.
    pub async fn connect<P>(
        &self,
        push: P,
        timeouts: (Duration, Duration),
        extra: usize,
        extra_timeout: Duration,
    ) -> RedisResult<(Con, Vec<Con>)>
    where
        P: AsyncPushSender + Clone,
    {
        let (connect, response) = timeouts;
        let client = match self {
            Target::Server(client) => client.clone(),
            Target::Sentinel { sentinel, master } => {
                let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(
                    RedisConnectionInfo::default().set_protocol(ProtocolVersion::RESP3),
                );
                sentinel
                    .lock()
                    .await
                    .async_master_for(master, Some(&node))
                    .await?
            }
            Target::Cluster(nodes) => {
                let builder = |response| {
                    ClusterClientBuilder::new(nodes.clone())
                        .use_protocol(ProtocolVersion::RESP3)
                        .connection_timeout(connect)
                        .response_timeout(response)
                };
                let main = builder(response).push_sender(push).build()?;
                let con = Con::Cluster(main.get_async_connection().await?);
                let mut more = Vec::with_capacity(extra);
                for _ in 0..extra {
                    let client = builder(extra_timeout).build()?;
                    more.push(Con::Cluster(client.get_async_connection().await?));
                }
                return Ok((con, more));
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(response))
            .set_push_sender(push);
        let con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut more = Vec::with_capacity(extra);
        for _ in 0..extra {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect))
                .set_response_timeout(Some(extra_timeout));
            more.push(Con::Single(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ));
        }
        Ok((Con::Single(con), more))
    }
}

/// A connection to one server, or to every node of a cluster.
#[derive(Clone)]
pub enum Con {
    /// One server (or the master Sentinel named).
    Single(MultiplexedConnection),
    /// A cluster: commands go to the node that holds their keys' slot.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Con {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Con::Single(_) => "Con::Single",
            Con::Cluster(_) => "Con::Cluster",
        })
    }
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Con::Single(c) => c.req_packed_command(cmd),
            Con::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Con::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Con::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Con::Single(c) => c.get_db(),
            Con::Cluster(c) => c.get_db(),
        }
    }
}

impl Con {
    /// Whether this connection mends itself node by node (a cluster's, which
    /// says so with a disconnection push): a failed command then fails only
    /// itself, and the link need not start over; it also has shards to
    /// probe.
    pub fn mends_itself(&self) -> bool {
        matches!(self, Con::Cluster(_))
    }

    /// How a script announces: `SPUBLISH` on a cluster, so a publish
    /// touches one shard.
    pub fn publish_command(&self) -> &'static str {
        match self {
            Con::Single(_) => "PUBLISH",
            Con::Cluster(_) => "SPUBLISH",
        }
    }

    /// Follows `topics`.
    pub async fn follow(&mut self, topics: &[String]) -> RedisResult<()> {
        match self {
            Con::Single(c) => c.subscribe(topics).await,
            // Each on its own shard.
            Con::Cluster(c) => {
                for topic in topics {
                    c.ssubscribe(topic).await?;
                }
                Ok(())
            }
        }
    }

    /// Stops following `topics`.
    pub async fn unfollow(&mut self, topics: &[String]) -> RedisResult<()> {
        match self {
            Con::Single(c) => c.unsubscribe(topics).await,
            Con::Cluster(c) => {
                for topic in topics {
                    c.sunsubscribe(topic).await?;
                }
                Ok(())
            }
        }
    }

    /// On a cluster, each master with its slots and whether it answers a
    /// `PING` within `limit`; `None` on one server, or when no node told
    /// the slots in time.
    pub async fn shards(&mut self, limit: Duration) -> Option<Vec<Shard>> {
        let Con::Cluster(c) = self else {
            return None;
        };
        let slots = c.route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        );
        let slots = tokio::time::timeout(limit, slots).await.ok()?.ok()?;
        // Each entry: start, end, then the master [host, port, id, ...].
        let mut masters: Vec<(String, u16, Vec<String>)> = Vec::new();
        let Value::Array(entries) = slots else {
            return None;
        };
        for entry in entries {
            let Value::Array(fields) = entry else {
                continue;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            let (Some(host), Some(Value::Int(port))) = (node.first(), node.get(1)) else {
                continue;
            };
            let Ok(host) = redis::from_redis_value_ref::<String>(host) else {
                continue;
            };
            let range = if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            };
            let port = *port as u16;
            match masters
                .iter_mut()
                .find(|(h, p, _)| *h == host && *p == port)
            {
                Some((_, _, ranges)) => ranges.push(range),
                None => masters.push((host, port, vec![range])),
            }
        }
        masters.sort();
        let mut shards = Vec::with_capacity(masters.len());
        for (host, port, ranges) in masters {
            let ping = c.route_command(
                redis::cmd("PING"),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port,
                }),
            );
            let up = matches!(tokio::time::timeout(limit, ping).await, Ok(Ok(_)));
            shards.push(Shard {
                node: format!("{host}:{port}"),
                slots: ranges.join(","),
                up,
            });
        }
        Some(shards)
    }

    /// `WAIT replicas timeout` for the writes this connection made, on a
    /// cluster to the master holding `key`'s slot (where they were made).
    pub async fn wait(&mut self, key: &str, replicas: u32, timeout: Duration) -> RedisResult<u32> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Con::Single(c) => cmd.query_async(c).await,
            Con::Cluster(c) => {
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = c.route_command(cmd, routing).await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }
}

/// A Lua script, run by its hash (`EVALSHA`) and sent whole (`EVAL`) to a
/// node that does not have it yet. `EVAL` goes to the node of the script's
/// keys, where `SCRIPT LOAD` would go to every node of a cluster, and wait
/// on one that hangs.
#[derive(Debug)]
pub struct Lua {
    code: String,
    hash: String,
}

/// One run of a [`Lua`] script: its keys and arguments.
#[derive(Debug)]
pub struct Call<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Lua {
    /// A script of `code`.
    pub fn new(code: String) -> Lua {
        let hash = redis::Script::new(&code).get_hash().to_owned();
        Lua { code, hash }
    }

    /// A run of it, keys and arguments to come.
    pub fn call(&self) -> Call<'_> {
        Call {
            lua: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

impl Call<'_> {
    /// Adds a key (on a cluster, the first one names the node).
    pub fn key(&mut self, key: impl redis::ToRedisArgs) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    fn cmd(&self, name: &str, script: &str) -> Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(script)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }

    /// Runs the script on `con`.
    pub async fn run<T: redis::FromRedisValue>(&self, con: &mut Con) -> RedisResult<T> {
        match self.cmd("EVALSHA", &self.lua.hash).query_async(con).await {
            Err(err)
                if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                self.cmd("EVAL", &self.lua.code).query_async(con).await
            }
            result => result,
        }
    }
}

//! Connections: one Redis or a Redis Cluster, commands and pipelines, and
//! what a caller is told when Redis fails.

use super::*;

/// A connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub(super) fn redis_err(e: redis::RedisError) -> ServiceError {
    ServiceError::unavailable_because(redis_failure(&e), e)
}

/// What a caller is told when Redis failed a call: what is wrong, in the
/// service's terms. The driver's text (addresses, protocol details) goes to
/// the log line above, not to clients.
pub(super) fn redis_failure(e: &redis::RedisError) -> &'static str {
    use redis::{ErrorKind, ServerErrorKind as S};
    if e.code() == Some("OOM") {
        return "the hot store (Redis) is out of memory and refuses writes; retry once it has room";
    }
    match e.kind() {
        ErrorKind::Server(S::BusyLoading) => {
            "the hot store (Redis) is loading its data after a restart; retry with backoff"
        }
        ErrorKind::Server(S::ClusterDown | S::MasterDown | S::TryAgain | S::ReadOnly)
        | ErrorKind::ClusterConnectionNotFound => {
            "the hot store (Redis) is failing over; retry with backoff"
        }
        ErrorKind::AuthenticationFailed | ErrorKind::Server(S::NoPerm) => {
            "the hot store (Redis) refused this node's credentials; retry later"
        }
        _ if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal() =>
        {
            "the hot store (Redis) is unreachable; retry with backoff"
        }
        _ => "the hot store (Redis) failed the call; retry with backoff",
    }
}

/// The part of a command's key (its first argument) that Redis Cluster
/// hashes: the text between the first `{` and the next `}` when non-empty,
/// else the whole key. Commands with equal tags share a slot.
pub(super) fn hash_tag(cmd: &Cmd) -> &[u8] {
    let key = match cmd.args_iter().nth(1) {
        Some(redis::Arg::Simple(key)) => key,
        _ => return &[],
    };
    if let Some(open) = key.iter().position(|b| *b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|b| *b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

impl Inner {
    pub(super) fn conn(&self) -> Conn {
        self.conn.clone()
    }

    pub(super) fn ttl(&self) -> u64 {
        self.opts.hot_ttl.as_secs().max(1)
    }

    pub(super) async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> StoreResult<T> {
        cmd.query_async(&mut self.conn()).await.map_err(redis_err)
    }

    /// Runs a pipeline. Every pipeline here is either all reads (every
    /// reply kept, in order) or all writes (every command `.ignore()`d, read
    /// as `()`); on a Redis Cluster a pipeline whose keys span several hash
    /// tags is split into one pipeline per tag, run concurrently, and the
    /// replies put back in command order, which is only right for those two
    /// shapes.
    pub(super) async fn pipe<T: redis::FromRedisValue>(&self, p: &Pipeline) -> StoreResult<T> {
        if p.is_empty() {
            // Redis rejects an empty pipeline; its answer is an empty list.
            return T::from_redis_value(Value::Array(Vec::new())).map_err(|e| redis_err(e.into()));
        }
        if matches!(self.conn, Conn::Cluster(_)) {
            let mut groups: Vec<(Pipeline, Vec<usize>)> = Vec::new();
            let mut by_tag: HashMap<&[u8], usize> = HashMap::new();
            for (i, cmd) in p.cmd_iter().enumerate() {
                let g = *by_tag.entry(hash_tag(cmd)).or_insert_with(|| {
                    groups.push((redis::pipe(), Vec::new()));
                    groups.len() - 1
                });
                groups[g].0.add_command(cmd.clone());
                groups[g].1.push(i);
            }
            if groups.len() > 1 {
                let replies = futures::future::try_join_all(groups.iter().map(|(sub, _)| {
                    let mut conn = self.conn();
                    async move { sub.query_async::<Vec<Value>>(&mut conn).await }
                }))
                .await
                .map_err(redis_err)?;
                let mut all = vec![Value::Nil; p.len()];
                for ((_, at), values) in groups.iter().zip(replies) {
                    for (i, v) in at.iter().zip(values) {
                        all[*i] = v;
                    }
                }
                return T::from_redis_value(Value::Array(all)).map_err(|e| redis_err(e.into()));
            }
        }
        p.query_async(&mut self.conn()).await.map_err(redis_err)
    }
}

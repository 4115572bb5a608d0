//! Removes what a test created in RabbitMQ and Redis, on request or when dropped — so a test
//! that panics before its clean-up leaves nothing behind either.

use crate::names::Names;
use crate::services::{AMQP, REDIS};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

/// The queues, exchanges and Redis prefixes of one test.
#[derive(Debug, Default)]
pub struct ResourceGuard {
    pub exchanges: Vec<String>,
    pub queues: Vec<String>,
    pub prefixes: Vec<String>,
    amqp_url: Option<String>,
    redis_url: Option<String>,
    done: bool,
}

impl ResourceGuard {
    /// Nothing to remove yet; on the local RabbitMQ and Redis.
    pub fn new() -> ResourceGuard {
        ResourceGuard::default()
    }

    /// What a test relay under `names` creates: its exchange, the test's sink queue, every
    /// key under its Redis prefix, and `relay_queues` — the work queue and the queues the relay
    /// derives from it, which only the relay knows (`o365_relay::pipeline::work_queue::QueueNames`).
    pub fn for_relay<S: Into<String>>(
        names: &Names,
        relay_queues: impl IntoIterator<Item = S>,
    ) -> ResourceGuard {
        ResourceGuard::new()
            .exchange(&names.exchange)
            .queues([names.work_queue.clone(), names.sink.clone()])
            .queues(relay_queues)
            .redis_prefix(&names.prefix)
    }

    /// Also removes `exchange`.
    pub fn exchange(mut self, exchange: impl Into<String>) -> ResourceGuard {
        self.exchanges.push(exchange.into());
        self
    }

    /// Also removes `queues`.
    pub fn queues<S: Into<String>>(mut self, queues: impl IntoIterator<Item = S>) -> ResourceGuard {
        self.queues.extend(queues.into_iter().map(Into::into));
        self
    }

    /// Also removes every Redis key under `prefix`.
    pub fn redis_prefix(mut self, prefix: impl Into<String>) -> ResourceGuard {
        self.prefixes.push(prefix.into());
        self
    }

    /// Another RabbitMQ than the local one.
    pub fn amqp_url(mut self, url: impl Into<String>) -> ResourceGuard {
        self.amqp_url = Some(url.into());
        self
    }

    /// Another Redis than the local one.
    pub fn redis_url(mut self, url: impl Into<String>) -> ResourceGuard {
        self.redis_url = Some(url.into());
        self
    }

    /// Removes everything now (the normal path); dropping then does nothing.
    pub async fn release(&mut self) {
        remove(
            self.amqp_url.as_deref().unwrap_or(AMQP),
            self.redis_url.as_deref().unwrap_or(REDIS),
            &self.exchanges,
            &self.queues,
            &self.prefixes,
        )
        .await;
        self.done = true;
    }
}

impl Drop for ResourceGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let amqp = self.amqp_url.clone().unwrap_or_else(|| AMQP.into());
        let redis = self.redis_url.clone().unwrap_or_else(|| REDIS.into());
        let exchanges = std::mem::take(&mut self.exchanges);
        let queues = std::mem::take(&mut self.queues);
        let prefixes = std::mem::take(&mut self.prefixes);
        // Drop may run inside a runtime (a panicking test): clean up on a thread of its own,
        // with a runtime of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(remove(&amqp, &redis, &exchanges, &queues, &prefixes));
            }
        })
        .join();
    }
}

/// Deletes `queues` and `exchanges` (missing ones are fine) and every Redis key under each of
/// `prefixes`. Errors are ignored: this is clean-up.
pub async fn remove(
    amqp_url: &str,
    redis_url: &str,
    exchanges: &[String],
    queues: &[String],
    prefixes: &[String],
) {
    if !(queues.is_empty() && exchanges.is_empty()) {
        if let Ok(conn) = lapin::Connection::connect(amqp_url, Default::default()).await {
            if let Ok(ch) = conn.create_channel().await {
                for q in queues {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for e in exchanges {
                    let _ = ch
                        .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ = conn.close(200, "bye".into()).await;
        }
    }
    for prefix in prefixes {
        let _ = purge_prefix(redis_url, prefix).await;
    }
}

/// Deletes every Redis key under `prefix` (SCAN, then DEL per page); the number deleted.
pub async fn purge_prefix(redis_url: &str, prefix: &str) -> redis::RedisResult<u64> {
    let mut c = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    let mut n = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(&mut c)
            .await?;
        if !keys.is_empty() {
            let deleted: u64 = redis::cmd("DEL").arg(&keys).query_async(&mut c).await?;
            n += deleted;
        }
        if next == 0 {
            return Ok(n);
        }
        cursor = next;
    }
}

/// `s` with Redis glob characters escaped, so a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_with_glob_characters_matches_only_itself() {
        assert_eq!(glob_escape("test:ab12:"), "test:ab12:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}

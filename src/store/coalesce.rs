//! Writes kept in memory for a short window and then sent together: the webhook's answer path
//! pushes here instead of making a Redis round trip (or spawning a task) per request.
//!
//! A [`Coalesced`] buffer belongs to the [`Store`]. The first push after a flush (the buffer was
//! empty) spawns the delayed flush itself, `window` later, on the current Tokio runtime; every
//! push until then joins that flush. [`Coalesced::flush_now`] writes at once (a reader that
//! must see this process's writes, and the graceful stop: [`Store::flush_coalesced`]).
//!
//! Entries whose write fails are dropped: only what may be lost is coalesced (status counters,
//! in-flight markers that are an optimisation). Why it is built so: docs/DESIGN.md,
//! "store/coalesce".

use super::{Store, StoreResult};
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Writes one batch of entries (one pipelined round trip, or one per tenant).
pub(crate) type Write<T> = for<'s> fn(&'s Store, Vec<T>) -> BoxFuture<'s, StoreResult<()>>;

/// A buffer of pending writes of one kind, see the module's documentation.
pub(crate) struct Coalesced<T> {
    /// What the entries are, for the log.
    what: &'static str,
    window: Duration,
    write: Write<T>,
    pending: Arc<Mutex<Vec<T>>>,
}

impl<T: Send + 'static> Coalesced<T> {
    pub(crate) fn new(what: &'static str, window: Duration, write: Write<T>) -> Self {
        Coalesced {
            what,
            window,
            write,
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Adds `entries`; `store` is the store that owns this buffer. True when they opened a
    /// window: the flush is then scheduled `window` later (without a Tokio runtime nothing is
    /// scheduled and the entries wait for [`Coalesced::flush_now`]).
    pub(crate) fn push(&self, store: &Arc<Store>, entries: impl IntoIterator<Item = T>) -> bool {
        let first = {
            let mut pending = self.pending.lock().expect("poisoned");
            let was_empty = pending.is_empty();
            pending.extend(entries);
            was_empty && !pending.is_empty()
        };
        if first {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let store = store.clone();
                let pending = self.pending.clone();
                let (what, window, write) = (self.what, self.window, self.write);
                runtime.spawn(async move {
                    tokio::time::sleep(window).await;
                    let batch = std::mem::take(&mut *pending.lock().expect("poisoned"));
                    if batch.is_empty() {
                        return;
                    }
                    if let Err(e) = write(&store, batch).await {
                        tracing::debug!(what, error = %e, "Cannot write coalesced entries; they are dropped.");
                    }
                });
            }
        }
        first
    }

    /// Writes what is pending now (nothing when the buffer is empty).
    pub(crate) async fn flush_now(&self, store: &Store) -> StoreResult<()> {
        let batch = std::mem::take(&mut *self.pending.lock().expect("poisoned"));
        if batch.is_empty() {
            return Ok(());
        }
        (self.write)(store, batch).await
    }

    /// Entries waiting to be written.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending.lock().expect("poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    //! Against the real Redis (127.0.0.1:6379), under a prefix of the test's own, purged at the
    //! end.
    use super::*;
    use redis::AsyncCommands;

    fn store() -> Arc<Store> {
        let prefix = format!("o365relay:test:coalesce:{}:", uuid::Uuid::new_v4().simple());
        Arc::new(Store::new("redis://127.0.0.1:6379", &prefix).expect("valid URL"))
    }

    /// `SET {prefix}{entry} 1 PX 60000` for each entry, in one round trip.
    fn write_keys(store: &Store, batch: Vec<String>) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let writes: Vec<(String, Duration)> = batch
                .iter()
                .map(|k| (store.key(k), Duration::from_secs(60)))
                .collect();
            store.set_many_px(&writes, "1").await
        })
    }

    async fn exists(store: &Store, rest: &str) -> bool {
        let mut c = store.conn().await.expect("Redis answers");
        c.exists(store.key(rest)).await.expect("Redis answers")
    }

    #[tokio::test]
    async fn the_first_push_schedules_one_flush_for_the_window_and_flush_now_writes_at_once() {
        let store = store();
        let buffer = Coalesced::new("test keys", Duration::from_millis(200), write_keys);
        assert!(buffer.push(&store, ["a".to_string()]), "opens a window");
        assert!(
            !buffer.push(&store, ["b".to_string(), "c".to_string()]),
            "joins the open window"
        );
        assert!(
            !buffer.push(&store, []),
            "nothing pushed, nothing scheduled"
        );
        assert_eq!(buffer.len(), 3);
        assert!(
            !exists(&store, "a").await,
            "nothing written before the window ends"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(buffer.len(), 0, "the scheduled flush took everything");
        for k in ["a", "b", "c"] {
            assert!(
                exists(&store, k).await,
                "{k} written by the scheduled flush"
            );
        }

        // After a flush, the next push opens a new window; flush_now does not wait for it.
        assert!(buffer.push(&store, ["d".to_string()]), "a new window");
        buffer.flush_now(&store).await.expect("written");
        assert!(exists(&store, "d").await, "written at once");
        assert_eq!(buffer.len(), 0);
        buffer.flush_now(&store).await.expect("nothing to write");
        store.purge_prefix().await.expect("purged");
    }

    #[test]
    fn without_a_runtime_entries_wait_for_flush_now() {
        let store = store();
        let buffer = Coalesced::new("test keys", Duration::from_millis(1), write_keys);
        assert!(buffer.push(&store, ["a".to_string()]));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(buffer.len(), 1, "no flush was scheduled");
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        runtime.block_on(async {
            buffer.flush_now(&store).await.expect("written");
            assert!(exists(&store, "a").await);
            store.purge_prefix().await.expect("purged");
        });
    }
}

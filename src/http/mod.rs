//! HTTP: from bytes on a connection to the routes' request model, and from their
//! answer model back to bytes.
//!
//! Every connection starts on [`lean`], a small HTTP/1.1 parser and writer that
//! holds almost nothing while a long-poll waits; what it does not take (event
//! streams, unusual framing) it hands, with the bytes already read, to hyper through [`adapter`].
//! Both wait between two requests on [`Closing`], the server's word that it stops.

pub mod adapter;
pub mod lean;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// The server's word that it is closing, which every idle connection waits
/// on between two requests: a flag and a [`Notify`], cheaper to wait on than
/// a watch channel.
#[derive(Debug, Default)]
pub struct Closing {
    closed: AtomicBool,
    notify: Notify,
}

impl Closing {
    /// Says so, and wakes every connection waiting on it.
    pub fn close(&self) {
        self.closed.store(true, SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether the server is closing.
    pub fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Resolves once the server is closing.
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a close in between wakes it.
        notified.as_mut().enable();
        if !self.is_closed() {
            notified.await;
        }
    }
}

/// The second an answer's `date:` names: the writers remake what they keep
/// of a head when it changes.
fn date_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// That second as a `date:` value.
fn http_date(second: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(second))
}

#[cfg(test)]
mod tests {
    use super::Closing;

    #[tokio::test]
    async fn a_wait_ends_when_the_server_closes_and_at_once_after() {
        let closing = std::sync::Arc::new(Closing::default());
        let waiting = tokio::spawn({
            let closing = closing.clone();
            async move { closing.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        closing.close();
        waiting.await.unwrap();
        closing.wait().await;
        assert!(closing.is_closed());
    }
}

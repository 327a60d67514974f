//! One kind of background worker. Every loop of a node (replication feeds, anti-entropy and
//! the feed trimmer, the client-sync hub's pump, the change streams' pump, the idempotency
//! purge, change-event trimming, the SIGHUP reload) runs under one [`Workers`], with one stop
//! signal: [`Workers::stop`] tells them all, and [`Workers::join`] waits for them up to a
//! deadline and aborts whatever is still running then, naming it.
//!
//! A worker gets a [`Stop`] and ends by itself once it is set (closing what it owns on the
//! way: the hub its sockets, the change feed its streams); one that does not is aborted at
//! the deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The background workers of one node. Cheap to clone; clones share the workers.
#[derive(Debug, Clone)]
pub struct Workers(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
}

/// The stop signal as a worker sees it.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Resolves once the workers are told to stop (at once if they were).
    pub async fn wait(&mut self) {
        // with every Workers handle gone, nobody can stop them: wait for ever (the worker
        // still ends by its own rule, e.g. when what it serves is dropped)
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }
}

impl Default for Workers {
    fn default() -> Self {
        Workers(Arc::new(Inner {
            stop: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
        }))
    }
}

impl Workers {
    pub fn new() -> Self {
        Self::default()
    }

    /// The stop signal, for a worker or for a request that must end with the node.
    pub fn stop_signal(&self) -> Stop {
        Stop(self.0.stop.subscribe())
    }

    /// Starts a worker on the current tokio runtime. After [`Workers::stop`], a new worker
    /// still starts, and sees the signal set.
    pub fn spawn<F, Fut>(&self, name: &'static str, worker: F)
    where
        F: FnOnce(Stop) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(worker(self.stop_signal()));
        let mut tasks = self.0.tasks.lock();
        tasks.retain(|(_, h)| !h.is_finished());
        tasks.push((name, handle));
    }

    /// Starts a worker that runs the blocking `job` every `period`, the first time after
    /// `first`, until stopped. A job's error is the job's to log.
    pub fn every<J>(&self, name: &'static str, first: Duration, period: Duration, job: J)
    where
        J: Fn() + Send + Sync + 'static,
    {
        let job = Arc::new(job);
        self.spawn(name, move |mut stop| async move {
            let start = tokio::time::Instant::now() + first;
            let mut ticks = tokio::time::interval_at(start, period);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = stop.wait() => return,
                }
                let job = job.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || job()).await {
                    tracing::error!(worker = name, error = %e, "a background job panicked");
                }
            }
        });
    }

    /// Tells every worker to stop. Does not wait (see [`Workers::join`]).
    pub fn stop(&self) {
        self.0.stop.send_replace(true);
    }

    pub fn is_stopping(&self) -> bool {
        *self.0.stop.borrow()
    }

    /// Stops the workers and waits for them up to `deadline`; aborts the ones still running
    /// then and returns their names.
    pub async fn join(&self, deadline: Duration) -> Vec<&'static str> {
        self.stop();
        let tasks = std::mem::take(&mut *self.0.tasks.lock());
        let end = tokio::time::Instant::now() + deadline;
        let mut late = Vec::new();
        for (name, mut handle) in tasks {
            if tokio::time::timeout_at(end, &mut handle).await.is_err() {
                handle.abort();
                late.push(name);
            }
        }
        late
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn workers_end_on_the_signal_and_one_that_does_not_is_aborted_by_name() {
        let w = Workers::new();
        let ended = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let ended = ended.clone();
            w.spawn("polite", move |mut stop| async move {
                stop.wait().await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
        w.spawn("stubborn", |_| std::future::pending());
        let late = w.join(Duration::from_millis(200)).await;
        assert_eq!(late, vec!["stubborn"]);
        assert_eq!(ended.load(Ordering::SeqCst), 3);
        // a worker started after the stop sees it at once
        let (tx, rx) = tokio::sync::oneshot::channel();
        w.spawn("late", move |stop| async move {
            let _ = tx.send(stop.is_set());
        });
        assert!(rx.await.unwrap());
    }

    #[tokio::test]
    async fn a_periodic_job_runs_until_stopped() {
        let w = Workers::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        w.every(
            "tick",
            Duration::ZERO,
            Duration::from_millis(10),
            move || {
                r.fetch_add(1, Ordering::SeqCst);
            },
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(w.join(Duration::from_secs(1)).await.is_empty());
        let n = runs.load(Ordering::SeqCst);
        assert!(n >= 2, "{n} runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(runs.load(Ordering::SeqCst), n, "no run after the stop");
    }
}

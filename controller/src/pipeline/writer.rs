//! The writer: the one task that changes the world. It takes every job
//! waiting as one group, prepares it on the newest world
//! ([`super::world::prepare`]), commits its writes in one transaction on
//! top of the change log's head, then publishes the new world, wakes the
//! long-polls whose site moved, and answers the jobs.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot, watch};

use super::world::{prepare, Job, Prepared};
use super::{Controller, Tx, LOG_KEEP, MAINTAIN_EVERY, MAX_GROUP, MAX_STALE_RETRIES};
use crate::error::Error;
use crate::store::StoreError;

struct TypedJob<T, F> {
    f: F,
    output: Option<T>,
    reply: oneshot::Sender<Result<T, Error>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnMut(&mut Tx<'_>) -> Result<T, Error> + Send,
{
    fn apply(&mut self, tx: &mut Tx<'_>) -> Result<(), Error> {
        self.output = Some((self.f)(tx)?);
        Ok(())
    }

    fn finish(self: Box<Self>, result: Result<(), Error>) {
        let TypedJob { output, reply, .. } = *self;
        let answer = result.and_then(|()| {
            output
                .ok_or_else(|| Error::Internal(anyhow::anyhow!("a change finished without output")))
        });
        // The caller may have gone away (client disconnected); the change stands.
        let _ = reply.send(answer);
    }
}

impl Controller {
    /// Run one change through the writer (see the module docs) and answer
    /// once it is durable and published. `f` changes the model through the
    /// [`Tx`] it is given; when it returns an error, whatever it changed is
    /// rolled back. It may run more than once (a retried group).
    pub(crate) async fn change<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnMut(&mut Tx<'_>) -> Result<T, Error> + Send + 'static,
    {
        self.require_current()?;
        let (reply, rx) = oneshot::channel();
        let job = TypedJob {
            f,
            output: None,
            reply,
        };
        self.jobs
            .send(Box::new(job))
            .map_err(|_| Error::Unavailable("the controller is shutting down".into()))?;
        rx.await
            .map_err(|_| Error::Unavailable("the controller is shutting down".into()))?
    }

    /// A group is durable: publish its world, wake the long-polls of the
    /// sites whose revision moved, answer its jobs.
    pub(super) fn publish(&self, p: Prepared, jobs: Vec<Box<dyn Job>>) {
        let seq = p.world.seq;
        self.published.store(Arc::new(p.world));
        self.published_seq.send_replace(seq);
        for name in &p.deleted {
            self.heartbeats.forget(name);
            self.metrics.apply_latency.forget(name);
        }
        let published = std::time::Instant::now();
        {
            let mut watchers = self.watchers.lock();
            for b in &p.bumps {
                self.metrics
                    .apply_latency
                    .changed(&b.site, b.revision, published);
                if let Some(n) = watchers.get(&b.site) {
                    n.notify_waiters();
                }
            }
            let snapshot = self.published.load();
            for name in p.woken {
                if snapshot.model.sites.contains_key(&name) {
                    if let Some(n) = watchers.get(&name) {
                        n.notify_waiters();
                    }
                } else if let Some(n) = watchers.remove(&name) {
                    // The deleted site's long-polls look again and end.
                    n.notify_waiters();
                }
            }
        }
        self.metrics.change_groups.observe(jobs.len() as f64);
        for job in jobs {
            job.finish(Ok(()));
        }
    }

    /// Run a group of jobs to the end. Take the log's head first (with
    /// replicas: wait while another commits; jobs arriving meanwhile join
    /// the group), catch up with what other replicas committed, prepare the
    /// group on that newest world, commit it, publish it. When the commit
    /// fails, nothing of it was stored or published; the jobs of a group
    /// are then run again one by one, so one bad change cannot fail the
    /// others. When the log moved under the change (`Stale`: another
    /// process committed to the same SQLite file, e.g. `admin-token
    /// create` beside `serve`), the group catches up and runs again
    /// (`stale_tries` so far).
    pub(super) async fn run_group(
        &self,
        mut jobs: Vec<Box<dyn Job>>,
        more: Option<&mut mpsc::UnboundedReceiver<Box<dyn Job>>>,
        stale_tries: u32,
    ) {
        let fail_all = |jobs: Vec<Box<dyn Job>>, e: StoreError| {
            self.metrics
                .store_failures
                .with_label_values(&[e.kind()])
                .inc();
            let msg = e.to_string();
            for job in jobs {
                job.finish(Err(StoreError::Unavailable(msg.clone()).into()));
            }
        };
        let waited = std::time::Instant::now();
        let mut tx = match self.store.begin_change().await {
            Ok(tx) => tx,
            Err(e) => return fail_all(jobs, e),
        };
        self.metrics
            .head_wait
            .observe(waited.elapsed().as_secs_f64());
        if let Some(rx) = more {
            while jobs.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
        }
        let base = self.published.load_full();
        if tx.head() > base.seq {
            match tx.changes_since(base.seq).await {
                Ok(c) => self.follow(&base, c),
                Err(e) => return fail_all(jobs, e),
            }
        }
        let base = self.published.load_full();
        let mut refused = Vec::new();
        let prepared = prepare(
            &base,
            &mut jobs,
            &mut refused,
            self.clock.now(),
            &self.settings.network,
            &self.fingerprint,
        );
        // Judged at the head, under its lock: a refusal is final.
        for (job, e) in refused {
            job.finish(Err(e));
        }
        let Some(mut p) = prepared else {
            return;
        };
        let writes = std::mem::take(&mut p.writes);
        match tx.commit(writes).await {
            Ok(seq) => {
                p.world.seq = seq;
                self.publish(p, jobs);
            }
            Err(StoreError::Stale { base, head }) if stale_tries < MAX_STALE_RETRIES => {
                tracing::debug!(
                    base,
                    head,
                    "the change log moved under this change; catching up and preparing it again"
                );
                Box::pin(self.run_group(jobs, None, stale_tries + 1)).await;
            }
            Err(e) => {
                self.metrics
                    .store_failures
                    .with_label_values(&[e.kind()])
                    .inc();
                if jobs.len() == 1 {
                    if let Some(job) = jobs.pop() {
                        job.finish(Err(e.into()));
                    }
                    return;
                }
                tracing::warn!(error = %e, jobs = jobs.len(), "changes failed in the database; retrying them one by one");
                for job in jobs {
                    Box::pin(self.run_group(vec![job], None, stale_tries)).await;
                }
            }
        }
    }
}

/// The writer task. Takes every job waiting as one group and runs it
/// ([`Controller::run_group`]); between groups, follows the heads other
/// replicas announce (so long-polls here wake for their changes without
/// waiting for a change of this one's). One group at a time: preparing the next group while
/// one commits was measured slower on two cores (smaller groups, more work
/// per change; docs/benchmarks.md). Ends when the controller is dropped.
pub(super) async fn writer(
    controller: Weak<Controller>,
    mut rx: mpsc::UnboundedReceiver<Box<dyn Job>>,
    mut heads: Option<watch::Receiver<u64>>,
) {
    loop {
        let first = tokio::select! {
            biased;
            job = rx.recv() => match job {
                Some(j) => j,
                None => return,
            },
            () = async {
                match controller.upgrade() {
                    Some(c) => c.catch_up_now.notified().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(c) = controller.upgrade() else {
                    return;
                };
                c.catch_up().await;
                continue;
            }
            head = next_head(&mut heads) => {
                let Some(c) = controller.upgrade() else {
                    return;
                };
                match head {
                    Some(h) if h > c.published.load().seq => c.catch_up().await,
                    Some(_) => {}
                    // The store stopped announcing: catch up only when a
                    // commit finds the log moved on.
                    None => heads = None,
                }
                continue;
            }
        };
        let Some(c) = controller.upgrade() else {
            return;
        };
        c.run_group(vec![first], Some(&mut rx), 0).await;
    }
}

/// The next head a store announces; never resolves without announcements.
async fn next_head(heads: &mut Option<watch::Receiver<u64>>) -> Option<u64> {
    match heads {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(*rx.borrow_and_update()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

/// The database's upkeep ([`Store::maintain`]), every MAINTAIN_EVERY; with
/// replicas, whichever takes the lock first does it.
pub(super) async fn maintain_loop(controller: Weak<Controller>) {
    let shutdown = match controller.upgrade() {
        Some(c) => c.shutdown.clone(),
        None => return,
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(MAINTAIN_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
        let Some(c) = controller.upgrade() else {
            return;
        };
        match c.store.maintain(c.now(), LOG_KEEP).await {
            Ok(Some(m)) => tracing::debug!(
                log_entries_pruned = m.log_entries_pruned,
                tokens_swept = m.tokens_swept,
                "database upkeep done"
            ),
            Ok(None) => tracing::debug!("database upkeep running on another replica"),
            Err(e) => tracing::warn!(error = %e, "database upkeep failed; trying again later"),
        }
    }
}

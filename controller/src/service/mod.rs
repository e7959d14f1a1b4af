//! The controller's service layer: validation, the model, the change
//! pipeline and the long-poll waiters. HTTP handlers are thin calls into
//! this.
//!
//! Durable first, one writer (docs/design.md, "Controller v2"):
//! - every change is a job sent to one writer task, which owns the working
//!   [`World`] (model, credential index, per-site configs);
//! - the writer takes every job waiting, applies each to a copy of the
//!   published world (O(1): persistent maps), brings the touched configs in
//!   step incrementally ([`crate::configs`]), and commits the group's writes
//!   *and the revision bumps they cause* in one transaction;
//! - only then is the new world published (one atomic pointer swap) and are
//!   the long-polls of the sites whose revision moved woken. Readers (admin
//!   calls, long-polls, metrics) only ever see committed state.
//! - A failed commit drops the copy: the published world is untouched and
//!   nothing needs reloading. A group that failed is retried job by job, so
//!   one job's conflict does not fail the others.
//!
//! Soft state (what agents report: last seen, applied revision, health) is
//! kept apart, in memory, and persisted in periodic batches
//! ([`heartbeat`]).

mod admin;
pub use admin::Actor;
pub use agent::AgentIdentity;
mod agent;
pub mod heartbeat;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use imbl::OrdMap;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use wardnet_common::wire::UnixTime;
use wardnet_common::Name;

use crate::configs::{self, SiteRender, Touches};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::{Model, NetworkSettings, Site};
use crate::store::{NewAudit, Store, StoreError, Write};

/// Where "now" comes from, so token expiry and last-seen are testable.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        crate::now()
    }
}

/// Settings the service needs besides the network.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub network: NetworkSettings,
    pub token_lifetime_secs: u64,
    pub long_poll_timeout: Duration,
    /// How often agents' reports (last seen, applied revision, health) are
    /// written to the database; a crash loses at most this much of them.
    pub report_persist_interval: Duration,
}

/// Jobs the writer takes at most in one group (one transaction).
const MAX_GROUP: usize = 512;

/// Everything readers see, as of one committed group.
#[derive(Clone, Default)]
pub struct World {
    pub model: Model,
    /// Agent credential hash -> site.
    credentials: imbl::HashMap<String, Name>,
    /// Active sites' configs.
    pub configs: OrdMap<Name, Arc<SiteRender>>,
}

impl World {
    fn index_site(&mut self, before: Option<&Site>, after: Option<&Site>) {
        if let Some(h) = before.and_then(|b| b.credential_hash.as_ref()) {
            self.credentials.remove(h);
        }
        if let Some(a) = after {
            if let Some(h) = &a.credential_hash {
                self.credentials.insert(h.clone(), a.name.clone());
            }
        }
    }
}

pub struct Controller {
    store: Arc<dyn Store>,
    settings: ServiceSettings,
    clock: Arc<dyn Clock>,
    fingerprint: String,
    published: ArcSwap<World>,
    jobs: mpsc::UnboundedSender<Box<dyn Job>>,
    /// Per site with waiting long-polls: its revision, sent when it moves.
    /// Wakes the long-polls waiting on a site (present while any waits).
    watchers: parking_lot::Mutex<HashMap<Name, Arc<Notify>>>,
    heartbeats: heartbeat::Heartbeats,
    pub metrics: Metrics,
    waiting: AtomicI64,
    shutdown: CancellationToken,
}

/// What a change closure hands back to the pipeline.
pub(crate) struct Mutation<T> {
    pub writes: Vec<Write>,
    /// (before, after) of every site the closure changed in the model.
    pub sites: Vec<(Option<Site>, Option<Site>)>,
    pub audit: Option<NewAudit>,
    pub output: T,
}

impl<T> Mutation<T> {
    pub fn new(output: T) -> Self {
        Self {
            writes: Vec::new(),
            sites: Vec::new(),
            audit: None,
            output,
        }
    }
}

/// A change waiting for the writer. `apply` may run more than once (a
/// group that failed is retried job by job); `finish` answers the caller.
trait Job: Send {
    fn apply(&mut self, m: &mut Model, now: UnixTime) -> Result<Effects, ApiError>;
    fn finish(self: Box<Self>, result: Result<(), ApiError>);
}

struct Effects {
    writes: Vec<Write>,
    sites: Vec<(Option<Site>, Option<Site>)>,
}

struct TypedJob<T, F> {
    f: F,
    output: Option<T>,
    reply: oneshot::Sender<Result<T, ApiError>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnMut(&mut Model, UnixTime) -> Result<Mutation<T>, ApiError> + Send,
{
    fn apply(&mut self, m: &mut Model, now: UnixTime) -> Result<Effects, ApiError> {
        let mut mu = (self.f)(m, now)?;
        if let Some(a) = mu.audit.take() {
            mu.writes.push(Write::Audit(a));
        }
        self.output = Some(mu.output);
        Ok(Effects {
            writes: mu.writes,
            sites: mu.sites,
        })
    }

    fn finish(self: Box<Self>, result: Result<(), ApiError>) {
        let TypedJob { output, reply, .. } = *self;
        let answer = result.and_then(|()| {
            output.ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("a change finished without output"))
            })
        });
        // The caller may have gone away (client disconnected); the change stands.
        let _ = reply.send(answer);
    }
}

impl Controller {
    /// Load the model from the store, render every site's config, and give
    /// a new revision to every site rendered with other settings or an
    /// older wardnet (a changed MTU reaches every agent once, at start).
    pub async fn start(
        store: Arc<dyn Store>,
        settings: ServiceSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StoreError> {
        let snap = store.load().await?;
        let fingerprint = configs::fingerprint(&settings.network);
        let mut world = World {
            model: Model::from_parts(snap.regions, snap.sites),
            ..World::default()
        };
        let sites: Vec<Site> = world.model.sites.values().map(|s| Site::clone(s)).collect();
        for s in &sites {
            world.index_site(None, Some(s));
        }
        let heartbeats = heartbeat::Heartbeats::load(&sites);
        let stale: Vec<Name> = sites
            .iter()
            .filter(|s| s.is_active() && s.render_fingerprint.as_deref() != Some(&fingerprint))
            .map(|s| s.name.clone())
            .collect();
        if !stale.is_empty() {
            // A new revision, and (no steps kept across a restart) a full
            // config, for each.
            let mut writes = Vec::new();
            for name in &stale {
                if let Some(site) = world.model.sites.get_mut(name) {
                    let site = Arc::make_mut(site);
                    site.revision += 1;
                    site.render_fingerprint = Some(fingerprint.clone());
                    writes.push(Write::SetRevision {
                        site: name.clone(),
                        revision: site.revision,
                        fingerprint: Some(fingerprint.clone()),
                    });
                }
            }
            tracing::info!(
                sites = stale.len(),
                "configs rendered with other settings or an older wardnet; revisions bumped"
            );
            store.commit(writes).await?;
        }
        world.configs = configs::render_all(&world.model, &settings.network);
        let (tx, rx) = mpsc::unbounded_channel();
        let controller = Arc::new(Self {
            store,
            fingerprint,
            clock,
            published: ArcSwap::from_pointee(world),
            jobs: tx,
            watchers: parking_lot::Mutex::new(HashMap::new()),
            heartbeats,
            metrics: Metrics::new(),
            waiting: AtomicI64::new(0),
            shutdown: CancellationToken::new(),
            settings,
        });
        tokio::spawn(writer(Arc::downgrade(&controller), rx));
        tokio::spawn(heartbeat::persist_loop(Arc::downgrade(&controller)));
        Ok(controller)
    }

    pub fn settings(&self) -> &ServiceSettings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// Wake every long-poll so a graceful shutdown does not wait for them.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    pub fn long_poll_waiters(&self) -> i64 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The published world: committed state only.
    pub fn snapshot(&self) -> Arc<World> {
        self.published.load_full()
    }

    /// Read the model.
    pub(crate) fn with_model<T>(&self, f: impl FnOnce(&Model) -> T) -> T {
        f(&self.published.load().model)
    }

    /// Run one change through the writer (see the module docs) and answer
    /// once it is durable and published. `f` must check everything before
    /// it changes the model: when it returns an error, the model must be as
    /// it found it. It may run more than once (a retried group).
    pub(crate) async fn change<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnMut(&mut Model, UnixTime) -> Result<Mutation<T>, ApiError> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = TypedJob {
            f,
            output: None,
            reply,
        };
        self.jobs
            .send(Box::new(job))
            .map_err(|_| ApiError::Unavailable("the controller is shutting down".into()))?;
        rx.await
            .map_err(|_| ApiError::Unavailable("the controller is shutting down".into()))?
    }

    /// Apply a group of jobs to a copy of `base`: the new world, and the
    /// writes (the jobs' and the revision bumps they cause) that make it
    /// durable. Jobs refused by validation are answered at once and leave
    /// the group; `None` when none is left.
    fn prepare(&self, base: &World, jobs: &mut Vec<Box<dyn Job>>) -> Option<Prepared> {
        let mut world = base.clone();
        let now = self.clock.now();
        let mut writes = Vec::new();
        let mut touches = Touches::default();
        let mut woken = BTreeSet::new();
        let mut kept = Vec::with_capacity(jobs.len());
        for mut job in jobs.drain(..) {
            // A job validates before it changes the model, so a refused job
            // leaves it as it was (no copy to restore: copying would make
            // every later write in the group copy the nodes it touches).
            match job.apply(&mut world.model, now) {
                Ok(effects) => {
                    for (before, after) in &effects.sites {
                        world.index_site(before.as_ref(), after.as_ref());
                        touches.site_changed(&world.model, before.as_ref(), after.as_ref());
                        let cred =
                            |s: &Option<Site>| s.as_ref().and_then(|s| s.credential_hash.clone());
                        if cred(before) != cred(after) {
                            woken.extend(before.as_ref().map(|s| s.name.clone()));
                        }
                    }
                    writes.extend(effects.writes);
                    kept.push(job);
                }
                Err(e) => job.finish(Err(e)),
            }
        }
        *jobs = kept;
        if jobs.is_empty() {
            return None;
        }
        let bumps = configs::apply(
            &mut world.model,
            &mut world.configs,
            &self.settings.network,
            touches,
        );
        for b in &bumps {
            if let Some(s) = world.model.sites.get_mut(&b.site) {
                Arc::make_mut(s).render_fingerprint = Some(self.fingerprint.clone());
            }
            writes.push(Write::SetRevision {
                site: b.site.clone(),
                revision: b.revision,
                fingerprint: Some(self.fingerprint.clone()),
            });
        }
        Some(Prepared {
            world: Arc::new(world),
            writes,
            bumps,
            woken,
        })
    }

    /// A group is durable: publish its world, wake the long-polls of the
    /// sites whose revision moved, answer its jobs.
    fn publish(&self, p: Prepared, jobs: Vec<Box<dyn Job>>) {
        self.published.store(p.world);
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

    /// Run one job on its own, start to end, in its own chain (a retry
    /// after a failure).
    async fn run_alone(&self, job: Box<dyn Job>, chain: u64) {
        let base = self.published.load_full();
        let mut jobs = vec![job];
        let Some(mut p) = self.prepare(&base, &mut jobs) else {
            return;
        };
        let writes = std::mem::take(&mut p.writes);
        match self.store.submit_chained(writes, chain).await {
            Ok(()) => self.publish(p, jobs),
            Err(e) => {
                self.metrics
                    .store_failures
                    .with_label_values(&[e.kind()])
                    .inc();
                if let Some(job) = jobs.pop() {
                    job.finish(Err(e.into()));
                }
            }
        }
    }

    /// What wakes the long-polls of `site`, shared by all of them; it is
    /// forgotten when the last one ends ([`Watch`]'s drop).
    fn watch<'a>(&'a self, site: &'a Name) -> Watch<'a> {
        let notify = self
            .watchers
            .lock()
            .entry(site.clone())
            .or_default()
            .clone();
        Watch {
            controller: self,
            site,
            notify: Some(notify),
        }
    }
}

/// A long-poll's hold on its site's [`Notify`].
struct Watch<'a> {
    controller: &'a Controller,
    site: &'a Name,
    notify: Option<Arc<Notify>>,
}

impl Watch<'_> {
    fn notify(&self) -> &Notify {
        self.notify
            .as_deref()
            .unwrap_or_else(|| unreachable!("taken only in drop"))
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let mut w = self.controller.watchers.lock();
        drop(self.notify.take());
        // Clones are made under this lock: a count of one is the map's own.
        if w.get(self.site).is_some_and(|n| Arc::strong_count(n) == 1) {
            w.remove(self.site);
        }
    }
}

/// A group applied to a world, waiting to be durable.
struct Prepared {
    world: Arc<World>,
    writes: Vec<Write>,
    bumps: Vec<configs::Bump>,
    woken: BTreeSet<Name>,
}

/// The writer task. Takes every job waiting as one group, prepares it on
/// top of the published world, commits its writes and publishes it once
/// they are durable. One group at a time: preparing the next group while
/// one commits was measured slower on two cores (smaller groups, more
/// work per change; docs/benchmarks.md).
///
/// When a group's commit fails, nothing of it was stored or published; its
/// jobs are retried one by one on the published world, so one bad change
/// cannot fail the others. Each batch is its own chain for the store (see
/// [`Store::submit_chained`]). Ends when the controller is dropped.
async fn writer(controller: Weak<Controller>, mut rx: mpsc::UnboundedReceiver<Box<dyn Job>>) {
    let mut chain = 0u64;
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let Some(c) = controller.upgrade() else {
            return;
        };
        let base = c.published.load_full();
        let Some(mut prepared) = c.prepare(&base, &mut jobs) else {
            continue;
        };
        let writes = std::mem::take(&mut prepared.writes);
        chain += 1;
        match c.store.submit_chained(writes, chain).await {
            Ok(()) => c.publish(prepared, jobs),
            Err(e) => {
                c.metrics
                    .store_failures
                    .with_label_values(&[e.kind()])
                    .inc();
                tracing::warn!(error = %e, jobs = jobs.len(), "changes failed in the database; retrying them one by one");
                drop(prepared);
                for job in jobs {
                    chain += 1;
                    c.run_alone(job, chain).await;
                }
            }
        }
    }
}

/// Counts a waiting long-poll for as long as it lives.
struct WaitGuard<'a>(&'a AtomicI64);

impl<'a> WaitGuard<'a> {
    fn new(c: &'a AtomicI64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

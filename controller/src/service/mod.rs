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
//! Replicas: several controllers may share one database (PostgreSQL). Each
//! world is as of one change of the database's change log (`World::seq`).
//! The writer takes the log's head first ([`Store::begin_change`]: other
//! replicas' changes wait), catches up with what they committed (reads the
//! rows the missed changes named and applies them like a group of its own,
//! [`Controller::absorb`]), prepares its group on that newest world and
//! commits it. The writer also catches up whenever the store announces a
//! newer head ([`Store::heads`]), so a long-poll here wakes for a change
//! committed through another replica.
//!
//! Soft state (what agents report: last seen, applied revision, health) is
//! kept apart, in memory, and persisted in periodic batches
//! ([`heartbeat`]).

mod admin;
pub use admin::Actor;
pub use agent::AgentIdentity;
mod agent;
pub mod heartbeat;
mod policy;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use imbl::OrdMap;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use wardnet_common::wire::UnixTime;
use wardnet_common::Name;

use crate::configs::{self, SiteRender, Touches};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::{Model, NetworkSettings, Site};
use crate::store::{CatchUp, Changes, NewAudit, Store, StoreError, Write};

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

/// How often start-up loads again when other replicas committed while it
/// bumped revisions.
const MAX_STALE_RETRIES: u32 = 50;

/// Change-log entries kept for replicas that catch up (older ones are
/// pruned; a replica further behind loads everything).
const LOG_KEEP: u64 = 100_000;
/// How long [`Controller::sync`] waits for this replica to catch up.
const SYNC_WAIT: Duration = Duration::from_secs(5);
/// How often the database's upkeep runs ([`Store::maintain`]).
const MAINTAIN_EVERY: Duration = Duration::from_secs(600);

/// Everything readers see, as of one committed group.
#[derive(Clone, Default)]
pub struct World {
    /// The change of the database's change log this world is as of.
    pub seq: u64,
    pub model: Model,
    /// Agent credential hash -> site.
    credentials: imbl::HashMap<String, Name>,
    /// Active sites' configs.
    pub configs: OrdMap<Name, Arc<SiteRender>>,
}

impl World {
    /// Record a site's change from `before` to `after` (already applied to
    /// the model): the credential index, what it touches, and whose
    /// long-polls must look again (a changed credential ends them).
    fn site_changed(
        &mut self,
        touches: &mut Touches,
        woken: &mut BTreeSet<Name>,
        before: Option<&Site>,
        after: Option<&Site>,
    ) {
        self.index_site(before, after);
        touches.site_changed(&self.model, before, after);
        let cred = |s: Option<&Site>| s.and_then(|s| s.credential_hash.clone());
        if cred(before) != cred(after) {
            woken.extend(before.map(|s| s.name.clone()));
        }
    }

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
    /// Other controllers share the database (the store announces heads).
    replicated: bool,
    /// The change of the log the published world is at.
    published_seq: watch::Sender<u64>,
    /// Asks the writer to catch up now (see [`Controller::sync`]).
    catch_up_now: Notify,
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
        let fingerprint = configs::fingerprint(&settings.network);
        let mut attempts = 0;
        let (snap, seq) = loop {
            let mut snap = store.load().await?;
            let mut writes = Vec::new();
            for site in snap.sites.iter_mut() {
                if site.is_active() && site.render_fingerprint.as_deref() != Some(&fingerprint) {
                    site.revision += 1;
                    site.render_fingerprint = Some(fingerprint.clone());
                    writes.push(Write::SetRevision {
                        site: site.name.clone(),
                        revision: site.revision,
                        fingerprint: Some(fingerprint.clone()),
                    });
                }
            }
            if writes.is_empty() {
                let seq = snap.seq;
                break (snap, seq);
            }
            // A new revision, and (no steps kept across a restart) a full
            // config, for each.
            let n = writes.len();
            match store.submit_change(snap.seq, writes).await {
                Ok(seq) => {
                    tracing::info!(
                        sites = n,
                        "configs rendered with other settings or an older wardnet; revisions bumped"
                    );
                    break (snap, seq);
                }
                // Another replica committed meanwhile: load again.
                Err(StoreError::Stale { .. }) if attempts < MAX_STALE_RETRIES => attempts += 1,
                Err(e) => return Err(e),
            }
        };
        let mut world = World {
            seq,
            model: Model::from_parts(snap.regions, snap.sites, snap.policy),
            ..World::default()
        };
        let sites: Vec<Site> = world.model.sites.values().map(|s| Site::clone(s)).collect();
        for s in &sites {
            world.index_site(None, Some(s));
        }
        let heartbeats = heartbeat::Heartbeats::load(&sites);
        world.configs = configs::render_all(&world.model, &settings.network);
        let heads = store.heads();
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
            replicated: heads.is_some(),
            published_seq: watch::Sender::new(seq),
            catch_up_now: Notify::new(),
            settings,
        });
        tokio::spawn(writer(Arc::downgrade(&controller), rx, heads));
        tokio::spawn(heartbeat::persist_loop(Arc::downgrade(&controller)));
        tokio::spawn(maintain_loop(Arc::downgrade(&controller)));
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

    /// With replicas: wait until this replica has caught up with every
    /// change committed (through any replica) before the call, so a read
    /// or a credential check right after a change made elsewhere sees it.
    /// One read of the log's head; nothing to do for a lone controller.
    pub async fn sync(&self) -> Result<(), ApiError> {
        if !self.replicated {
            return Ok(());
        }
        let head = self.store.head().await?;
        let mut seen = self.published_seq.subscribe();
        if *seen.borrow() >= head {
            return Ok(());
        }
        self.catch_up_now.notify_one();
        let caught_up = tokio::time::timeout(SYNC_WAIT, seen.wait_for(|s| *s >= head))
            .await
            .is_ok_and(|r| r.is_ok());
        if caught_up {
            return Ok(());
        }
        Err(ApiError::Unavailable(format!(
            "this controller is behind the database (at change {}, the head is {head}); \
             try again or use another replica",
            *self.published_seq.borrow()
        )))
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
    /// durable. Jobs refused by validation leave the group and are handed
    /// back with their error; `None` when no job is left.
    fn prepare(
        &self,
        base: &World,
        jobs: &mut Vec<Box<dyn Job>>,
        refused: &mut Vec<(Box<dyn Job>, ApiError)>,
    ) -> Option<Prepared> {
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
                        world.site_changed(
                            &mut touches,
                            &mut woken,
                            before.as_ref(),
                            after.as_ref(),
                        );
                    }
                    writes.extend(effects.writes);
                    kept.push(job);
                }
                Err(e) => refused.push((job, e)),
            }
        }
        *jobs = kept;
        if jobs.is_empty() {
            return None;
        }
        if !Arc::ptr_eq(&world.model.policy, &base.model.policy) {
            for t in world
                .model
                .policy_touches(&base.model.policy, &world.model.policy)
            {
                touches.policy_target(&world.model, &t);
            }
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
            world,
            writes,
            bumps,
            woken,
            deleted: Vec::new(),
        })
    }

    /// Changes other replicas committed, applied to a copy of `base` as if
    /// they were a group of this one's: the same incremental renders, with
    /// the database's revisions (several changes caught up at once become
    /// one step from the revision this replica had to the stored one; an
    /// agent in between is sent the full config). The database's revisions
    /// are the truth: a site whose config did not change here although its
    /// row's revision moved (a replica with other network settings, or
    /// changes that cancelled out) is rendered in full at the row's
    /// revision.
    fn absorb(&self, base: &World, changes: Changes) -> Prepared {
        let mut world = base.clone();
        let mut touches = Touches::default();
        let mut woken = BTreeSet::new();
        let mut deleted = Vec::new();
        if let Some(p) = changes.policy {
            let old = std::mem::replace(&mut world.model.policy, Arc::new(p));
            for t in world.model.policy_touches(&old, &world.model.policy) {
                touches.policy_target(&world.model, &t);
            }
        }
        for (name, row) in changes.regions {
            match row {
                Some(r) => world.model.upsert_region(r),
                None => {
                    world.model.remove_region(&name);
                }
            }
        }
        let mut stored = Vec::with_capacity(changes.sites.len());
        for (name, row) in changes.sites {
            let before = world.model.sites.get(&name).map(|s| Site::clone(s));
            if let (Some(b), Some(r)) = (&before, &row) {
                if b.inputs == r.inputs {
                    // Only its revision moved (another site's change
                    // reached its config: a hub gaining a spoke): that
                    // site's row brings the change; treating this one as
                    // changed would render a hub's whole region again.
                    stored.push((name, r.revision));
                    continue;
                }
            }
            let after = row.map(|mut s| {
                stored.push((name.clone(), s.revision));
                // The revision moves below, as the writer moved it.
                s.revision = before.as_ref().map_or(s.revision, |b| b.revision);
                s
            });
            match &after {
                Some(s) => {
                    world.model.upsert_site(s.clone());
                }
                None => {
                    world.model.remove_site(&name);
                    // Its services went with it (the store cascades).
                    world.model.drop_services_of(&name);
                    deleted.push(name.clone());
                }
            }
            world.site_changed(&mut touches, &mut woken, before.as_ref(), after.as_ref());
        }
        let target: std::collections::BTreeMap<Name, u64> = stored.iter().cloned().collect();
        let computed = configs::apply_to(
            &mut world.model,
            &mut world.configs,
            &self.settings.network,
            touches,
            &target,
        );
        let mut rerendered = 0;
        let mut bumps = Vec::new();
        for (name, revision) in stored {
            let ours = world.model.sites.get(&name).map(|s| s.revision);
            if ours != Some(revision) {
                if let Some(s) = world.model.sites.get_mut(&name) {
                    Arc::make_mut(s).revision = revision;
                }
                match configs::render_one(&world.model, &self.settings.network, &name) {
                    Some(r) => world.configs.insert(name.clone(), r),
                    None => world.configs.remove(&name),
                };
                rerendered += 1;
            }
            let was = base.model.sites.get(&name).map(|s| s.revision);
            if was != Some(revision) {
                bumps.push(configs::Bump {
                    site: name,
                    revision,
                });
            }
        }
        let unlogged = computed
            .iter()
            .filter(|b| !bumps.iter().any(|x| x.site == b.site))
            .count();
        if rerendered > 0 {
            tracing::debug!(
                rerendered,
                "configs unchanged here although their stored revision moved; rendered in full"
            );
        }
        if unlogged > 0 {
            tracing::warn!(
                unlogged,
                "configs computed from other replicas' changes moved where the database's did not; \
                 do all replicas run the same wardnet with the same [network] settings?"
            );
        }
        world.seq = changes.head;
        Prepared {
            world,
            writes: Vec::new(),
            bumps,
            woken,
            deleted,
        }
    }

    /// Follow the database: apply the changes other replicas committed
    /// after the published world, and publish them (waking the long-polls
    /// of the sites they moved). Only the writer task calls this.
    async fn catch_up(&self) {
        let base = self.published.load_full();
        match self.store.changes_since(base.seq).await {
            Ok(c) => self.follow(&base, c),
            Err(e) => {
                self.metrics
                    .store_failures
                    .with_label_values(&[e.kind()])
                    .inc();
                tracing::warn!(error = %e, "cannot read other replicas' changes; trying again");
            }
        }
    }

    /// Apply and publish what [`Store::changes_since`] (or a change's
    /// [`crate::store::ChangeTx::changes_since`]) gave for `base`.
    fn follow(&self, base: &World, c: CatchUp) {
        match c {
            CatchUp::Changes(c) => {
                if c.head > base.seq {
                    let n = c.sites.len() + c.regions.len();
                    let p = self.absorb(base, c);
                    tracing::debug!(
                        from = base.seq,
                        to = p.world.seq,
                        rows = n,
                        "caught up with other replicas"
                    );
                    self.metrics.caught_up.inc();
                    self.publish(p, Vec::new());
                }
            }
            CatchUp::Reload(snap) => {
                tracing::info!(
                    from = base.seq,
                    to = snap.seq,
                    "too far behind the change log; loading everything"
                );
                self.reload(snap);
            }
        }
    }

    /// Replace the world with a fresh load and wake every long-poll (each
    /// looks at its site's revision again).
    fn reload(&self, snap: crate::store::Snapshot) {
        let mut world = World {
            seq: snap.seq,
            model: Model::from_parts(snap.regions, snap.sites, snap.policy),
            ..World::default()
        };
        let sites: Vec<Site> = world.model.sites.values().map(|s| Site::clone(s)).collect();
        for s in &sites {
            world.index_site(None, Some(s));
        }
        world.configs = configs::render_all(&world.model, &self.settings.network);
        let seq = world.seq;
        self.published.store(Arc::new(world));
        self.published_seq.send_replace(seq);
        for n in self.watchers.lock().values() {
            n.notify_waiters();
        }
    }

    /// A group is durable: publish its world, wake the long-polls of the
    /// sites whose revision moved, answer its jobs.
    fn publish(&self, p: Prepared, jobs: Vec<Box<dyn Job>>) {
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
    /// others.
    async fn run_group(
        &self,
        mut jobs: Vec<Box<dyn Job>>,
        more: Option<&mut mpsc::UnboundedReceiver<Box<dyn Job>>>,
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
        let prepared = self.prepare(&base, &mut jobs, &mut refused);
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
                    Box::pin(self.run_group(vec![job], None)).await;
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
    world: World,
    writes: Vec<Write>,
    bumps: Vec<configs::Bump>,
    woken: BTreeSet<Name>,
    /// Sites the group deleted (their reports are forgotten).
    deleted: Vec<Name>,
}

/// The writer task. Takes every job waiting as one group and runs it
/// ([`Controller::run_group`]); between groups, follows the heads other
/// replicas announce (so long-polls here wake for their changes without
/// waiting for a change of this one's). One group at a time: preparing the next group while
/// one commits was measured slower on two cores (smaller groups, more work
/// per change; docs/benchmarks.md). Ends when the controller is dropped.
async fn writer(
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
        c.run_group(vec![first], Some(&mut rx)).await;
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
async fn maintain_loop(controller: Weak<Controller>) {
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

//! The controller's service layer: validation, the in-memory model, the
//! change pipeline and the long-poll waiters. HTTP handlers are thin calls
//! into this.
//!
//! A change runs in three steps:
//! 1. under the write lock: validate against the model, mutate the model,
//!    find the sites the change affects (O(neighbourhood), never all sites)
//!    and mark them dirty, queue the change's writes as one batch in the
//!    store;
//! 2. release the lock, wait until the batch is durable (the store groups
//!    concurrent batches into one fsync);
//! 3. flush: re-render the dirty sites, bump the revision where the rendered
//!    config changed, store the bumps, wake the long-polls of the sites whose
//!    revision moved, and answer.
//!
//! Step 3 is shared the way the store shares an fsync: one flush serves
//! every change that marked sites dirty before it started. Under load (many
//! spokes of a region enrolling at once) the region's hub, whose config has
//! thousands of peers, is then rendered and hashed once per flush rather
//! than once per enrolment. A change still answers only after its sites'
//! new revisions are durable and their agents woken.
//!
//! If a batch fails in the store the model is reloaded from it, so memory
//! never claims what the database does not hold.

mod admin;
pub use admin::Actor;
pub use agent::AgentIdentity;
mod agent;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wardnet_common::wire::UnixTime;
use wardnet_common::Name;

use crate::affected::affected_by_site_change;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::{Model, NetworkSettings, Site};
use crate::render::{config_hash_owned, render};
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
}

pub struct Controller {
    store: Arc<dyn Store>,
    settings: ServiceSettings,
    clock: Arc<dyn Clock>,
    state: RwLock<State>,
    /// Serialises changes to the model (held while computing and queueing a
    /// change, not while it is written to disk).
    write_lock: tokio::sync::Mutex<()>,
    /// Serialises flushes of dirty sites (see the module docs).
    flush_log: tokio::sync::Mutex<FlushLog>,
    pub metrics: Metrics,
    waiting: AtomicI64,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct State {
    model: Model,
    /// Agent credential hash -> site.
    credentials: HashMap<String, Name>,
    /// Per site: the last revision known durable; long-polls wait on it.
    revisions: HashMap<Name, watch::Sender<u64>>,
    /// Enrolment tokens redeemed by this process (a fast refusal for a racing
    /// second redemption; the database is the judge across replicas).
    consumed_tokens: HashSet<String>,
    /// Sites a change may have touched whose configs are not yet re-rendered.
    dirty: BTreeSet<Name>,
    /// Number of the flush that will pick up `dirty` (starts at 1).
    generation: u64,
}

/// What flushes have done, for the changes waiting on them.
#[derive(Default)]
struct FlushLog {
    /// The last flush completed.
    done: u64,
    /// Flushes whose writes failed (rare; the model was reloaded).
    failed: BTreeSet<u64>,
}

impl State {
    fn load(model: Model) -> Self {
        let mut s = State {
            model,
            generation: 1,
            ..State::default()
        };
        let sites: Vec<Site> = s.model.sites.values().cloned().collect();
        for site in &sites {
            s.index_site(None, Some(site));
        }
        s
    }

    /// Keep the credential index and the revision channels in step with a
    /// site change.
    fn index_site(&mut self, before: Option<&Site>, after: Option<&Site>) {
        if let Some(h) = before.and_then(|b| b.credential_hash.as_ref()) {
            self.credentials.remove(h);
        }
        match after {
            Some(a) => {
                if let Some(h) = &a.credential_hash {
                    self.credentials.insert(h.clone(), a.name.clone());
                }
                self.revisions
                    .entry(a.name.clone())
                    .or_insert_with(|| watch::channel(a.revision).0);
            }
            None => {
                if let Some(b) = before {
                    // Dropping the sender wakes every waiter of the deleted site.
                    self.revisions.remove(&b.name);
                }
            }
        }
    }
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

impl Controller {
    /// Load the model from the store and bring every site's revision in step
    /// with the current settings (a changed MTU, say, gives every site a new
    /// config once, at start).
    pub async fn start(
        store: Arc<dyn Store>,
        settings: ServiceSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, StoreError> {
        let snap = store.load().await?;
        let mut model = Model::from_parts(snap.regions, snap.sites);
        let mut writes = Vec::new();
        let names: Vec<Name> = model.sites.keys().cloned().collect();
        for name in names {
            if let Some(w) = refresh_revision(&mut model, &settings.network, &name) {
                writes.push(w);
            }
        }
        if !writes.is_empty() {
            tracing::info!(
                sites = writes.len(),
                "configs changed with the settings; revisions bumped"
            );
            store.commit(writes).await?;
        }
        let metrics = Metrics::new();
        let controller = Arc::new(Self {
            store,
            settings,
            clock,
            state: RwLock::new(State::load(model)),
            write_lock: tokio::sync::Mutex::new(()),
            flush_log: tokio::sync::Mutex::new(FlushLog::default()),
            metrics,
            waiting: AtomicI64::new(0),
            shutdown: CancellationToken::new(),
        });
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

    /// Read the model.
    pub(crate) fn with_model<T>(&self, f: impl FnOnce(&Model) -> T) -> T {
        f(&self.state.read().model)
    }

    /// Run one change through the pipeline (see the module docs).
    pub(crate) async fn change<T>(
        &self,
        f: impl FnOnce(&mut Model, UnixTime) -> Result<Mutation<T>, ApiError>,
    ) -> Result<T, ApiError> {
        let guard = self.write_lock.lock().await;
        let now = self.clock.now();
        let (pending, generation, output) = {
            let mut state = self.state.write();
            let mut m = f(&mut state.model, now)?;
            let mut touched = BTreeSet::new();
            for (before, after) in &m.sites {
                state.index_site(before.as_ref(), after.as_ref());
                touched.extend(affected_by_site_change(
                    &state.model,
                    before.as_ref(),
                    after.as_ref(),
                ));
            }
            let generation = (!touched.is_empty()).then_some(state.generation);
            state.dirty.extend(touched);
            if let Some(a) = m.audit.take() {
                m.writes.push(Write::Audit(a));
            }
            (self.store.submit(m.writes), generation, m.output)
        };
        drop(guard);
        match pending.await {
            Ok(()) => {
                if let Some(generation) = generation {
                    self.flush(generation).await?;
                }
                Ok(output)
            }
            Err(e) => {
                self.reload_after_failure().await;
                Err(e.into())
            }
        }
    }

    /// Make sure flush number `generation` has run: re-render the dirty
    /// sites, store the revisions that moved and wake their long-polls. The
    /// first caller runs it for everyone waiting; the sites marked dirty
    /// while it runs go to the next flush.
    async fn flush(&self, generation: u64) -> Result<(), ApiError> {
        let mut log = self.flush_log.lock().await;
        if log.done < generation {
            let (pending, bumped, this) = {
                let _guard = self.write_lock.lock().await;
                let mut state = self.state.write();
                let dirty = std::mem::take(&mut state.dirty);
                let this = state.generation;
                state.generation += 1;
                let mut writes = Vec::new();
                let mut bumped = Vec::new();
                for name in dirty {
                    if let Some(w) =
                        refresh_revision(&mut state.model, &self.settings.network, &name)
                    {
                        if let Write::SetRevision { site, revision, .. } = &w {
                            bumped.push((site.clone(), *revision));
                        }
                        writes.push(w);
                    }
                }
                let pending = (!writes.is_empty()).then(|| self.store.submit(writes));
                (pending, bumped, this)
            };
            let result = match pending {
                Some(p) => p.await,
                None => Ok(()),
            };
            match result {
                Ok(()) => {
                    let state = self.state.read();
                    let now = std::time::Instant::now();
                    for (site, rev) in bumped {
                        self.metrics.apply_latency.changed(&site, rev, now);
                        if let Some(tx) = state.revisions.get(&site) {
                            tx.send_if_modified(|cur| {
                                let newer = rev > *cur;
                                if newer {
                                    *cur = rev;
                                }
                                newer
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = ?e, "storing new revisions failed; reloading the model");
                    log.failed.insert(this);
                    self.reload_after_failure().await;
                }
            }
            log.done = this;
        }
        if log.failed.contains(&generation) {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the change is stored, but storing the new config revisions failed; \
                 the controller reloaded its model and agents will be sent fresh configs"
            )));
        }
        Ok(())
    }

    /// A queued batch failed: the model holds a change the database does
    /// not. Reload the model, and bring every site's revision in step with
    /// it (as at start), never going below a revision an agent may have
    /// been served.
    async fn reload_after_failure(&self) {
        let _guard = self.write_lock.lock().await;
        // The writer takes batches in order: once this empty batch is done,
        // everything queued before it is settled and `load` sees it.
        if let Err(e) = self.store.commit(Vec::new()).await {
            tracing::error!(error = ?e, "cannot drain the database writer after a failed write");
        }
        let snap = match self.store.load().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = ?e, "cannot reload the model after a failed write");
                return;
            }
        };
        let mut model = Model::from_parts(snap.regions, snap.sites);
        let served: Vec<(Name, u64)> = {
            let state = self.state.read();
            state
                .model
                .sites
                .values()
                .map(|s| (s.name.clone(), s.revision))
                .collect()
        };
        for (name, served) in served {
            if let Some(site) = model.sites.get_mut(&name) {
                if site.revision < served {
                    site.revision = served;
                    site.config_hash = None;
                }
            }
        }
        let mut writes = Vec::new();
        let names: Vec<Name> = model.sites.keys().cloned().collect();
        for name in &names {
            if let Some(w) = refresh_revision(&mut model, &self.settings.network, name) {
                writes.push(w);
            }
        }
        // Durable before any waiter is told about them.
        if !writes.is_empty() {
            if let Err(e) = self.store.commit(writes).await {
                tracing::error!(error = ?e, "cannot store revisions after a failed write");
            }
        }
        {
            let mut state = self.state.write();
            let revisions = std::mem::take(&mut state.revisions);
            let consumed = std::mem::take(&mut state.consumed_tokens);
            let generation = state.generation;
            *state = State::load(model);
            state.consumed_tokens = consumed;
            state.generation = generation;
            // Keep the existing channels (waiters hold receivers of them).
            for (name, tx) in revisions {
                if let Some(site) = state.model.sites.get(&name) {
                    tx.send_replace(site.revision);
                    state.revisions.insert(name, tx);
                }
            }
        }
    }

    fn revision_rx(&self, site: &Name) -> Option<watch::Receiver<u64>> {
        self.state
            .read()
            .revisions
            .get(site)
            .map(|tx| tx.subscribe())
    }
}

/// Render a site, and when its config differs from what was last rendered,
/// bump its revision and return the write that records it.
fn refresh_revision(model: &mut Model, net: &NetworkSettings, name: &Name) -> Option<Write> {
    let hash = render(model, net, name).map(config_hash_owned);
    let site = model.sites.get_mut(name)?;
    if hash == site.config_hash {
        return None;
    }
    if hash.is_some() {
        site.revision += 1;
    }
    site.config_hash = hash.clone();
    Some(Write::SetRevision {
        site: name.clone(),
        revision: site.revision,
        config_hash: hash,
    })
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

//! The change pipeline: how a change becomes durable and visible. The
//! [`Controller`] holds the published world; what admins and agents ask is
//! in [`crate::ops`], and HTTP handlers are thin calls into that.
//!
//! - [`tx`]: a change described once (a job's [`Tx`]);
//! - [`world`]: the world, and `prepare` (a group of jobs applied to it, no I/O);
//! - [`writer`]: the writer task (group, commit, publish, wake);
//! - [`follow`]: replicas and the change log (`absorb`, catch-up);
//! - [`waiters`]: long-polls waiting for their site.
//!
//! Durable first, one writer (docs/design.md, "The controller"):
//! - every change is a job sent to one writer task, which owns the working
//!   [`World`] (model, credential index, per-site configs);
//! - the writer takes every job waiting, applies each to a copy of the
//!   published world (O(1): persistent maps), brings the touched configs in
//!   step incrementally ([`crate::site_configs`]), and commits the group's writes
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
//! [`follow::absorb`]), prepares its group on that newest world and
//! commits it. The writer also catches up whenever the store announces a
//! newer head ([`Store::heads`]), so a long-poll here wakes for a change
//! committed through another replica.
//!
//! Soft state (what agents report: last seen, applied revision, health) is
//! kept apart, in memory, and persisted in periodic batches
//! ([`crate::reports`], [`persist`]).

mod follow;
mod persist;
mod tx;
mod waiters;
mod world;
mod writer;

pub(crate) use tx::Tx;
pub(crate) use waiters::WaitGuard;
pub(crate) use world::World;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use wardnet_common::wire::UnixTime;
use wardnet_common::Name;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::model::{Model, NetworkSettings, Site};
use crate::reports::Heartbeats;
use crate::site_configs;
use crate::store::{Store, StoreError, Write};
use world::Job;

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

pub struct Controller {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) settings: ServiceSettings,
    clock: Arc<dyn Clock>,
    fingerprint: String,
    pub(crate) published: ArcSwap<World>,
    jobs: mpsc::UnboundedSender<Box<dyn Job>>,
    /// Per site with waiting long-polls: its revision, sent when it moves.
    /// Wakes the long-polls waiting on a site (present while any waits).
    watchers: parking_lot::Mutex<HashMap<Name, Arc<Notify>>>,
    pub(crate) heartbeats: Heartbeats,
    pub metrics: Metrics,
    pub(crate) waiting: AtomicI64,
    pub(crate) shutdown: CancellationToken,
    /// Other controllers share the database (the store announces heads).
    pub(crate) replicated: bool,
    /// The change of the log the published world is at.
    published_seq: watch::Sender<u64>,
    /// Asks the writer to catch up now (see [`Controller::sync`]).
    catch_up_now: Notify,
    /// Admin tokens the database confirmed, by hash, and when: while the
    /// database does not answer, they are taken on this replica's word
    /// (see [`Controller::authenticate_admin`]).
    pub(crate) admins_seen:
        parking_lot::Mutex<HashMap<String, (crate::store::AdminToken, UnixTime)>>,
    /// Since when the database has not answered (0: it answers).
    pub(crate) database_away: AtomicI64,
    /// A change followed from another replica was rendered with other
    /// settings than this one's: look at the network's (`check_network`).
    network_doubt: std::sync::atomic::AtomicBool,
    /// Why this replica is out of date (another started since with other
    /// `[network]` settings): it then serves neither agents nor changes.
    out_of_date: parking_lot::Mutex<Option<String>>,
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
        let fingerprint = site_configs::fingerprint(&settings.network);
        let ours = crate::store::StoredNetwork {
            fingerprint: fingerprint.clone(),
            settings: format!("{:?}", settings.network),
            set_at: clock.now(),
        };
        let mut attempts = 0;
        let (snap, seq) = loop {
            let mut snap = store.load().await?;
            let mut writes = Vec::new();
            // The network's settings become this replica's: the last to
            // start is right, and any other replica with other settings
            // finds itself out of date (see `check_network`).
            match store.network_settings().await? {
                Some(n) if n.fingerprint == fingerprint => {}
                stored => {
                    if let Some(n) = &stored {
                        tracing::warn!(
                            network = %n.settings,
                            here = %ours.settings,
                            "this replica renders configs with other [network] settings (or another \
                             wardnet version) than the network's: it takes over, and every site gets a \
                             new revision; a replica still running with the old ones stops serving \
                             agents and changes until it is restarted with these"
                        );
                    }
                    writes.push(Write::SetNetwork(ours.clone()));
                }
            }
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
            let n = writes
                .iter()
                .filter(|w| matches!(w, Write::SetRevision { .. }))
                .count();
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
        let heartbeats = Heartbeats::load(&sites);
        world.configs = site_configs::render_all(&world.model, &settings.network);
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
            admins_seen: parking_lot::Mutex::new(HashMap::new()),
            database_away: AtomicI64::new(0),
            network_doubt: std::sync::atomic::AtomicBool::new(false),
            out_of_date: parking_lot::Mutex::new(None),
            settings,
        });
        tokio::spawn(writer::writer(Arc::downgrade(&controller), rx, heads));
        tokio::spawn(persist::persist_loop(Arc::downgrade(&controller)));
        tokio::spawn(writer::maintain_loop(Arc::downgrade(&controller)));
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
    pub async fn sync(&self) -> Result<(), Error> {
        if !self.replicated {
            return Ok(());
        }
        // (A read: the database not answering is no change lost.)
        let head = self.store.head().await.map_err(|e| match e {
            StoreError::Unavailable(_) | StoreError::Commit(_) => {
                Error::Unavailable(format!("the database did not answer ({e})"))
            }
            other => other.into(),
        })?;
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
        Err(Error::Unavailable(format!(
            "this controller is behind the database (at change {}, the head is {head}); \
             try again or use another replica",
            *self.published_seq.borrow()
        )))
    }

    /// Refuses (503) while this replica is out of date: the network's
    /// configs are rendered with other `[network]` settings than its own,
    /// so what it would serve an agent differs from what the others serve
    /// at the same revision. The agent moves to another replica.
    pub fn require_current(&self) -> Result<(), Error> {
        match self.out_of_date.lock().as_ref() {
            None => Ok(()),
            Some(why) => Err(Error::Unavailable(why.clone())),
        }
    }

    /// A site row rendered with another fingerprint was followed: see
    /// whether the network's settings are still this replica's.
    pub(crate) fn doubt_network<'a>(
        &self,
        mut fingerprints: impl Iterator<Item = Option<&'a str>>,
    ) {
        if fingerprints.any(|f| f.is_some_and(|f| f != self.fingerprint)) {
            self.network_doubt.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) async fn check_network(&self) {
        if !self.network_doubt.swap(false, Ordering::Relaxed) {
            return;
        }
        match self.store.network_settings().await {
            Ok(Some(n)) if n.fingerprint != self.fingerprint => {
                let mut out = self.out_of_date.lock();
                if out.is_none() {
                    let why = format!(
                        "this replica is out of date: a replica started at {} renders the network's configs \
                         with other [network] settings or another wardnet version ({}; here: {:?}); \
                         restart this one with the same settings and version",
                        wardnet_common::time::format_rfc3339(n.set_at),
                        n.settings,
                        self.settings.network
                    );
                    tracing::error!("{why}; it serves neither agents nor changes until then");
                    *out = Some(why);
                    // Waiting long-polls hear it now, and their agents move.
                    for n in self.watchers.lock().values() {
                        n.notify_waiters();
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the network's settings");
                self.network_doubt.store(true, Ordering::Relaxed);
            }
        }
    }

    /// The published world: committed state only.
    pub fn snapshot(&self) -> Arc<World> {
        self.published.load_full()
    }

    /// Read the model.
    pub(crate) fn with_model<T>(&self, f: impl FnOnce(&Model) -> T) -> T {
        f(&self.published.load().model)
    }
}

//! Replicas and the change log: how this controller follows changes that
//! other replicas committed to the shared database. [`absorb`] applies them
//! to the world like a group of this replica's own (no I/O); the
//! controller's `catch_up`, `follow` and `reload` read the log and publish.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::world::{Prepared, World};
use super::Controller;
use wardnet_common::Name;

use crate::model::{Model, NetworkSettings, Site};
use crate::site_configs::{self, Touches};
use crate::store::{CatchUp, Changes};

/// Changes other replicas committed, applied to a copy of `base` as if
/// they were a group of this one's: the same incremental renders, with
/// the database's revisions (several changes caught up at once become
/// one step from the revision this replica had to the stored one; an
/// agent in between is sent the full config). The database's revisions
/// are the truth: a site whose config did not change here although its
/// row's revision moved (a replica with other network settings, or
/// changes that cancelled out) is rendered in full at the row's
/// revision.
pub(super) fn absorb(base: &World, changes: Changes, net: &NetworkSettings) -> Prepared {
    let mut world = base.clone();
    let mut touches = Touches::default();
    let mut woken = BTreeSet::new();
    let mut deleted = Vec::new();
    if let Some(p) = changes.policy {
        let old = std::mem::replace(&mut world.model.policy, Arc::new(p));
        world.model.ensure_space();
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
    let computed =
        site_configs::apply_to(&mut world.model, &mut world.configs, net, touches, &target);
    let mut rerendered = 0;
    let mut bumps = Vec::new();
    for (name, revision) in stored {
        let ours = world.model.sites.get(&name).map(|s| s.revision);
        if ours != Some(revision) {
            if let Some(s) = world.model.sites.get_mut(&name) {
                Arc::make_mut(s).revision = revision;
            }
            match site_configs::render_one(&world.model, net, &name) {
                Some(r) => world.configs.insert(name.clone(), r),
                None => world.configs.remove(&name),
            };
            rerendered += 1;
        }
        let was = base.model.sites.get(&name).map(|s| s.revision);
        if was != Some(revision) {
            bumps.push(site_configs::Bump {
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

impl Controller {
    /// Follow the database: apply the changes other replicas committed
    /// after the published world, and publish them (waking the long-polls
    /// of the sites they moved). Only the writer task calls this.
    pub(super) async fn catch_up(&self) {
        let base = self.published.load_full();
        match self.store.changes_since(base.seq).await {
            Ok(c) => {
                self.follow(&base, c);
                self.check_network().await;
            }
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
    pub(super) fn follow(&self, base: &World, c: CatchUp) {
        match c {
            CatchUp::Changes(c) => {
                self.doubt_network(
                    c.sites
                        .iter()
                        .map(|(_, r)| r.as_ref().and_then(|s| s.render_fingerprint.as_deref())),
                );
                if c.head > base.seq {
                    let n = c.sites.len() + c.regions.len();
                    let p = absorb(base, c, &self.settings.network);
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
                self.doubt_network(snap.sites.iter().map(|s| s.render_fingerprint.as_deref()));
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
        world.configs = site_configs::render_all(&world.model, &self.settings.network);
        let seq = world.seq;
        self.published.store(Arc::new(world));
        self.published_seq.send_replace(seq);
        for n in self.watchers.lock().values() {
            n.notify_waiters();
        }
    }
}

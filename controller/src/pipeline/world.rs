//! The world readers see and the writer prepares: the model, the
//! credential index and every active site's config, as of one change of
//! the database's change log. [`prepare`] applies a group of jobs to it
//! without any I/O: each job's [`Tx`] says what changed, and the configs,
//! revisions, credential index and woken long-polls follow from that.

use std::collections::BTreeSet;
use std::sync::Arc;

use imbl::OrdMap;
use wardnet_common::wire::UnixTime;
use wardnet_common::Name;

use super::Tx;
use crate::error::Error;
use crate::model::{Model, NetworkSettings, Site};
use crate::site_configs::{self, SiteRender, Touches};
use crate::store::Write;

/// Everything readers see, as of one committed group.
#[derive(Clone, Default)]
pub struct World {
    /// The change of the database's change log this world is as of.
    pub seq: u64,
    pub model: Model,
    /// Agent credential hash -> site.
    pub(crate) credentials: imbl::HashMap<String, Name>,
    /// Active sites' configs.
    pub configs: OrdMap<Name, Arc<SiteRender>>,
}

impl World {
    /// Record a site's change from `before` to `after` (already applied to
    /// the model): the credential index, what it touches, and whose
    /// long-polls must look again (a changed credential ends them).
    pub(super) fn site_changed(
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

    pub(super) fn index_site(&mut self, before: Option<&Site>, after: Option<&Site>) {
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

/// A group applied to a world, waiting to be durable.
pub(super) struct Prepared {
    pub(super) world: World,
    pub(super) writes: Vec<Write>,
    pub(super) bumps: Vec<site_configs::Bump>,
    pub(super) woken: BTreeSet<Name>,
    /// Sites the group deleted (their reports are forgotten).
    pub(super) deleted: Vec<Name>,
}

/// A change waiting for the writer. `apply` may run more than once (a
/// group that failed is retried job by job); `finish` answers the caller.
pub(super) trait Job: Send {
    fn apply(&mut self, tx: &mut Tx<'_>) -> Result<(), Error>;
    fn finish(self: Box<Self>, result: Result<(), Error>);
}

/// Apply a group of jobs to a copy of `base`: the new world, and the
/// writes (the jobs' and the revision bumps they cause) that make it
/// durable. Jobs refused by validation leave the group and are handed
/// back with their error; `None` when no job is left.
pub(super) fn prepare(
    base: &World,
    jobs: &mut Vec<Box<dyn Job>>,
    refused: &mut Vec<(Box<dyn Job>, Error)>,
    now: UnixTime,
    net: &NetworkSettings,
    fingerprint: &str,
) -> Option<Prepared> {
    let mut world = base.clone();
    let mut writes = Vec::new();
    let mut touches = Touches::default();
    let mut woken = BTreeSet::new();
    let mut kept = Vec::with_capacity(jobs.len());
    for mut job in jobs.drain(..) {
        // A refused job's changes are undone one by one (not by keeping
        // a copy of the model to go back to: copying would make every
        // later write in the group copy the nodes it touches).
        let mut tx = Tx::new(&mut world.model, now);
        match job.apply(&mut tx) {
            Ok(()) => {
                let effects = tx.finish();
                for (before, after) in &effects.sites {
                    world.site_changed(&mut touches, &mut woken, before.as_ref(), after.as_ref());
                }
                writes.extend(effects.writes);
                kept.push(job);
            }
            Err(e) => {
                tx.rollback();
                refused.push((job, e));
            }
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
    let bumps = site_configs::apply(&mut world.model, &mut world.configs, net, touches);
    for b in &bumps {
        if let Some(s) = world.model.sites.get_mut(&b.site) {
            Arc::make_mut(s).render_fingerprint = Some(fingerprint.to_owned());
        }
        writes.push(Write::SetRevision {
            site: b.site.clone(),
            revision: b.revision,
            fingerprint: Some(fingerprint.to_owned()),
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

#[cfg(test)]
mod tests {
    use super::super::tx::tests::{name, region, site};
    use super::*;
    use crate::site_configs::tests::settings;

    /// A job that runs `f`, and remembers how it ended.
    struct TestJob<F>(F);

    impl<F: FnMut(&mut Tx<'_>) -> Result<(), Error> + Send> Job for TestJob<F> {
        fn apply(&mut self, tx: &mut Tx<'_>) -> Result<(), Error> {
            (self.0)(tx)
        }
        fn finish(self: Box<Self>, _: Result<(), Error>) {}
    }

    fn job(f: impl FnMut(&mut Tx<'_>) -> Result<(), Error> + Send + 'static) -> Box<dyn Job> {
        Box::new(TestJob(f))
    }

    /// A world with region r and hub h (active).
    fn world() -> World {
        let mut model = Model::default();
        model.upsert_region(region("r", "100.64.0.0/20"));
        let mut hub = site("h", "r", 1, Some(1), "10.0.1.0/24");
        hub.role = wardnet_common::Role::Hub;
        hub.endpoint = Some("198.51.100.1:51820".parse().expect("endpoint"));
        model.upsert_site(hub);
        let configs = site_configs::render_all(&model, &settings());
        World {
            seq: 7,
            model,
            credentials: Default::default(),
            configs,
        }
    }

    #[test]
    fn a_group_is_prepared_without_a_store_and_a_refused_job_leaves_no_trace() {
        let base = world();
        let mut jobs = vec![
            job(|tx| {
                tx.insert_site(site("gp-1", "r", 2, Some(2), "10.0.2.0/24"));
                Ok(())
            }),
            job(|tx| {
                // Changes the model, then refuses: nothing of it may stay.
                tx.insert_site(site("gp-2", "r", 3, Some(3), "10.0.3.0/24"));
                Err(Error::Conflict("refused after a change".into()))
            }),
        ];
        let mut refused = Vec::new();
        let p =
            prepare(&base, &mut jobs, &mut refused, 9, &settings(), "fp").expect("one job is left");

        assert_eq!((jobs.len(), refused.len()), (1, 1));
        assert!(p.world.model.sites.contains_key(&name("gp-1")));
        assert!(!p.world.model.sites.contains_key(&name("gp-2")));
        assert!(p
            .world
            .model
            .lan_overlapping(&"10.0.3.0/24".parse().expect("p"), &name("x"))
            .is_none());
        // The new spoke and its hub get new configs: a revision each,
        // written with the group, and the base world is untouched.
        let mut bumped: Vec<String> = p.bumps.iter().map(|b| b.site.to_string()).collect();
        bumped.sort();
        assert_eq!(bumped, ["gp-1", "h"]);
        let revisions = p
            .writes
            .iter()
            .filter(|w| matches!(w, Write::SetRevision { fingerprint: Some(f), .. } if f == "fp"))
            .count();
        assert_eq!(revisions, 2);
        assert!(matches!(p.writes.first(), Some(Write::InsertSite(s)) if s.name == name("gp-1")));
        assert!(p.world.configs.contains_key(&name("gp-1")));
        assert!(!base.model.sites.contains_key(&name("gp-1")));
        assert_eq!(base.model.sites[&name("h")].revision, 0);
    }

    #[test]
    fn a_group_whose_every_job_is_refused_prepares_nothing() {
        let base = world();
        let mut jobs = vec![job(|tx| {
            tx.delete_site(&name("h"));
            Err(Error::Forbidden("no".into()))
        })];
        let mut refused = Vec::new();
        assert!(prepare(&base, &mut jobs, &mut refused, 9, &settings(), "fp").is_none());
        assert_eq!(refused.len(), 1);
    }
}

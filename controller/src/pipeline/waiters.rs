//! Long-polls waiting for their site's revision to move: one [`Notify`]
//! per site with waiters, woken when a published group moves the site.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use wardnet_common::Name;

use super::Controller;

impl Controller {
    /// What wakes the long-polls of `site`, shared by all of them; it is
    /// forgotten when the last one ends ([`Watch`]'s drop).
    pub(crate) fn watch<'a>(&'a self, site: &'a Name) -> Watch<'a> {
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
pub(crate) struct Watch<'a> {
    controller: &'a Controller,
    site: &'a Name,
    notify: Option<Arc<Notify>>,
}

impl Watch<'_> {
    pub(crate) fn notify(&self) -> &Notify {
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

/// Counts a waiting long-poll for as long as it lives.
pub(crate) struct WaitGuard<'a>(&'a AtomicI64);

impl<'a> WaitGuard<'a> {
    pub(crate) fn new(c: &'a AtomicI64) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

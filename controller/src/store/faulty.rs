//! A store wrapper that fails on demand, for tests of what the controller
//! does when its database fails: BEGIN (nothing runs), a write (the writes
//! before it run inside the transaction, then it fails: the store must roll
//! them back), or COMMIT (everything ran, nothing may be stored).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use wardnet_common::wire::{AuditEntry, UnixTime};

use super::{
    AdminToken, CatchUp, ChangeTx, EnrolToken, Maintenance, Pending, Snapshot, Store, StoreError,
    StoredReport, Write,
};

/// Where the next batches fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    None = 0,
    Begin = 1,
    /// A write in the middle of each batch fails (after the ones before it ran).
    Write = 2,
    Commit = 3,
}

pub struct FaultyStore {
    inner: Arc<dyn Store>,
    fault: Arc<AtomicU8>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            fault: Arc::new(AtomicU8::new(Fault::None as u8)),
        }
    }

    /// Fail every batch from now on this way (`Fault::None` heals it).
    pub fn set(&self, f: Fault) {
        self.fault.store(f as u8, Ordering::SeqCst);
    }

    fn fault(&self) -> Fault {
        fault_of(&self.fault)
    }

    fn inject(&self, writes: Vec<Write>) -> Result<Vec<Write>, StoreError> {
        inject(self.fault(), writes)
    }
}

fn fault_of(f: &AtomicU8) -> Fault {
    match f.load(Ordering::SeqCst) {
        1 => Fault::Begin,
        2 => Fault::Write,
        3 => Fault::Commit,
        _ => Fault::None,
    }
}

/// The batch as the fault wants it, or the error it fails with before
/// reaching the store.
fn inject(fault: Fault, mut writes: Vec<Write>) -> Result<Vec<Write>, StoreError> {
    {
        match fault {
            Fault::None => Ok(writes),
            Fault::Begin => Err(StoreError::Unavailable(
                "injected: cannot begin a transaction".into(),
            )),
            Fault::Write => {
                let mid = writes.len() / 2;
                writes.insert(mid, Write::Fail("injected: a write failed".into()));
                Ok(writes)
            }
            Fault::Commit => {
                // Everything runs and is rolled back: a failing last write
                // after all of them is what a failed COMMIT leaves behind.
                writes.push(Write::Fail("injected: COMMIT failed".into()));
                Ok(writes)
            }
        }
    }
}

/// A change whose commit fails as the store's fault says at commit time.
struct FaultyChange {
    inner: Box<dyn ChangeTx>,
    fault: Arc<AtomicU8>,
}

#[async_trait]
impl ChangeTx for FaultyChange {
    fn head(&self) -> u64 {
        self.inner.head()
    }

    async fn changes_since(&mut self, seq: u64) -> Result<CatchUp, StoreError> {
        self.inner.changes_since(seq).await
    }

    async fn commit(self: Box<Self>, writes: Vec<Write>) -> Result<u64, StoreError> {
        let writes = inject(fault_of(&self.fault), writes)?;
        self.inner.commit(writes).await
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load().await
    }

    fn submit(&self, writes: Vec<Write>) -> Pending {
        match self.inject(writes) {
            Ok(w) => self.inner.submit(w),
            Err(e) => Box::pin(async { Err(e) }),
        }
    }

    fn submit_change(&self, base: u64, writes: Vec<Write>) -> Pending<u64> {
        match self.inject(writes) {
            Ok(w) => self.inner.submit_change(base, w),
            Err(e) => Box::pin(async { Err(e) }),
        }
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.inner.head().await
    }

    async fn begin_change(&self) -> Result<Box<dyn ChangeTx>, StoreError> {
        if self.fault() == Fault::Begin {
            return Err(StoreError::Unavailable(
                "injected: cannot begin a transaction".into(),
            ));
        }
        Ok(Box::new(FaultyChange {
            inner: self.inner.begin_change().await?,
            fault: self.fault.clone(),
        }))
    }

    async fn changes_since(&self, seq: u64) -> Result<CatchUp, StoreError> {
        self.inner.changes_since(seq).await
    }

    fn heads(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.heads()
    }

    async fn maintain(&self, now: UnixTime, keep: u64) -> Result<Option<Maintenance>, StoreError> {
        self.inner.maintain(now, keep).await
    }

    async fn reports_since(&self, since: UnixTime) -> Result<Vec<StoredReport>, StoreError> {
        self.inner.reports_since(since).await
    }

    async fn enrol_token(&self, hash: &str) -> Result<Option<EnrolToken>, StoreError> {
        self.inner.enrol_token(hash).await
    }

    async fn admin_token(&self, hash: &str) -> Result<Option<AdminToken>, StoreError> {
        self.inner.admin_token(hash).await
    }

    async fn network_settings(&self) -> Result<Option<super::StoredNetwork>, StoreError> {
        self.inner.network_settings().await
    }

    async fn orgs(&self) -> Result<Vec<crate::model::Org>, StoreError> {
        self.inner.orgs().await
    }

    async fn audit(
        &self,
        limit: u32,
        before: Option<i64>,
        org: Option<&wardnet_common::Name>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit(limit, before, org).await
    }
}

//! A store wrapper that fails on demand, for tests of what the controller
//! does when its database fails: BEGIN (nothing runs), a write (the writes
//! before it run inside the transaction, then it fails: the store must roll
//! them back), or COMMIT (everything ran, nothing may be stored).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use wardnet_common::wire::AuditEntry;

use super::{AdminToken, EnrolToken, Pending, Snapshot, Store, StoreError, Write};

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
    fault: AtomicU8,
    /// The chain of the last batch refused here before reaching the inner
    /// store: its later batches are refused too (the chain contract).
    poisoned: parking_lot::Mutex<Option<u64>>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            fault: AtomicU8::new(Fault::None as u8),
            poisoned: parking_lot::Mutex::new(None),
        }
    }

    /// Fail every batch from now on this way (`Fault::None` heals it).
    pub fn set(&self, f: Fault) {
        self.fault.store(f as u8, Ordering::SeqCst);
    }

    fn fault(&self) -> Fault {
        match self.fault.load(Ordering::SeqCst) {
            1 => Fault::Begin,
            2 => Fault::Write,
            3 => Fault::Commit,
            _ => Fault::None,
        }
    }
}

impl FaultyStore {
    fn submit_in(&self, mut writes: Vec<Write>, chain: Option<u64>) -> Pending {
        let pass = |w: Vec<Write>| match chain {
            Some(c) => self.inner.submit_chained(w, c),
            None => self.inner.submit(w),
        };
        if chain.is_some() && *self.poisoned.lock() == chain {
            return Box::pin(async {
                Err(StoreError::Unavailable(
                    "an earlier batch of this chain failed".into(),
                ))
            });
        }
        match self.fault() {
            Fault::None => pass(writes),
            Fault::Begin => {
                if chain.is_some() {
                    *self.poisoned.lock() = chain;
                }
                Box::pin(async {
                    Err(StoreError::Unavailable(
                        "injected: cannot begin a transaction".into(),
                    ))
                })
            }
            Fault::Write => {
                let mid = writes.len() / 2;
                writes.insert(mid, Write::Fail("injected: a write failed".into()));
                pass(writes)
            }
            Fault::Commit => {
                // Everything runs and is rolled back: a failing last write
                // after all of them is what a failed COMMIT leaves behind.
                writes.push(Write::Fail("injected: COMMIT failed".into()));
                pass(writes)
            }
        }
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load().await
    }

    fn submit(&self, writes: Vec<Write>) -> Pending {
        self.submit_in(writes, None)
    }

    fn submit_chained(&self, writes: Vec<Write>, chain: u64) -> Pending {
        self.submit_in(writes, Some(chain))
    }

    async fn enrol_token(&self, hash: &str) -> Result<Option<EnrolToken>, StoreError> {
        self.inner.enrol_token(hash).await
    }

    async fn admin_token(&self, hash: &str) -> Result<Option<AdminToken>, StoreError> {
        self.inner.admin_token(hash).await
    }

    async fn audit(&self, limit: u32, before: Option<i64>) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit(limit, before).await
    }
}

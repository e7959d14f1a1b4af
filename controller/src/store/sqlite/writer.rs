//! The writer thread: it owns the write connection and does group commit.
//! It takes every batch waiting in its queue, runs each inside its own
//! SAVEPOINT (so one batch's conflict rolls back only that batch), commits
//! them with one fsync, then answers each caller.

use super::*;

type Reply = oneshot::Sender<Result<u64, StoreError>>;

/// A batch for the writer thread: its writes, whom to answer, and the
/// change it was built on (for [`Store::submit_change`]).
pub(super) struct Batch {
    writes: Vec<Write>,
    reply: Reply,
    base: Option<u64>,
}

pub(super) fn writer_loop(mut conn: Connection, mut rx: mpsc::UnboundedReceiver<Batch>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.len() >= 512 {
                break;
            }
        }
        let results = commit_group(&mut conn, &batch);
        for (b, result) in batch.into_iter().zip(results) {
            // The caller may have gone away (client disconnected); the write stands.
            let _ = b.reply.send(result);
        }
    }
}

/// Run each batch in a savepoint inside one transaction and commit once.
/// Each answers the log's head after it.
fn commit_group(conn: &mut Connection, batch: &[Batch]) -> Vec<Result<u64, StoreError>> {
    let mut tx = match conn.transaction() {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("cannot begin a transaction: {e}");
            return batch
                .iter()
                .map(|_| Err(StoreError::Unavailable(msg.clone())))
                .collect();
        }
    };
    let mut results = Vec::with_capacity(batch.len());
    for b in batch {
        let r = if batch.len() == 1 {
            // Alone in the transaction: it is the unit, no savepoint needed.
            apply_batch(&tx, b)
        } else {
            (|| {
                // Dropping an uncommitted savepoint rolls back just this batch.
                let sp = tx.savepoint().map_err(classify)?;
                let head = apply_batch(&sp, b)?;
                sp.commit().map_err(classify)?;
                Ok::<u64, StoreError>(head)
            })()
        };
        results.push(r);
    }
    if batch.len() == 1 && results.iter().any(Result::is_err) {
        // The lone batch failed without a savepoint: roll it all back.
        drop(tx);
        return results;
    }
    if let Err(e) = tx.commit() {
        tracing::error!(error = %e, "database commit failed; no change of this group is stored");
        let msg = e.to_string();
        return batch
            .iter()
            .map(|_| Err(StoreError::Commit(msg.clone())))
            .collect();
    }
    results
}

/// One batch: check its base against the head, run its writes, and log it
/// when it changes regions or sites. Answers the head after it.
fn apply_batch(tx: &Connection, b: &Batch) -> Result<u64, StoreError> {
    let head = read_head(tx)?;
    if let Some(base) = b.base {
        if base != head {
            return Err(StoreError::Stale { base, head });
        }
    }
    let (statements, failure) = statements::for_batch(&b.writes);
    for st in &statements {
        run(tx, st)?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let (regions, sites) = crate::store::changed_keys(&b.writes);
    let policy = crate::store::changes_policy(&b.writes);
    if regions.is_empty() && sites.is_empty() && !policy {
        return Ok(head);
    }
    let seq = head + 1;
    let names =
        |v: &[wardnet_common::Name]| json(&v.iter().map(|n| n.as_str()).collect::<Vec<_>>());
    tx.prepare_cached(
        "INSERT INTO change_log (seq, at, regions, sites, policy) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| {
        st.execute(params![
            seq as i64,
            crate::now(),
            names(&regions),
            names(&sites),
            policy
        ])
    })
    .map_err(classify)?;
    tx.prepare_cached("UPDATE change_head SET seq = ?1 WHERE id = 1")
        .and_then(|mut st| st.execute([seq as i64]))
        .map_err(classify)?;
    Ok(seq)
}

/// Run one statement of a batch (cached: the same few run thousands of times).
fn run(tx: &Connection, st: &Statement) -> Result<(), StoreError> {
    let n = tx
        .prepare_cached(&statements::sqlite(st.sql))
        .and_then(|mut s| s.execute(rusqlite::params_from_iter(&st.params)))
        .map_err(classify)?;
    match &st.exactly_one {
        Some(otherwise) if n != 1 => Err(StoreError::Precondition(otherwise.clone())),
        _ => Ok(()),
    }
}

/// A change on SQLite: one process owns the file, so the head it read
/// cannot move under it; the writer thread still checks it at commit.
pub(super) struct SqliteChange {
    pub(super) writer: mpsc::UnboundedSender<Batch>,
    pub(super) reader: Arc<Mutex<Connection>>,
    pub(super) head: u64,
}

#[async_trait]
impl crate::store::ChangeTx for SqliteChange {
    fn head(&self) -> u64 {
        self.head
    }

    async fn changes_since(&mut self, seq: u64) -> Result<crate::store::CatchUp, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || changes_since(&reader.lock(), seq)).await?
    }

    async fn commit(self: Box<Self>, writes: Vec<Write>) -> Result<u64, StoreError> {
        queue(&self.writer, writes, Some(self.head)).await
    }
}

pub(super) fn queue(
    writer: &mpsc::UnboundedSender<Batch>,
    writes: Vec<Write>,
    base: Option<u64>,
) -> Pending<u64> {
    {
        let (tx, rx) = oneshot::channel();
        let sent = writer
            .send(Batch {
                writes,
                reply: tx,
                base,
            })
            .is_ok();
        Box::pin(async move {
            let stopped = || StoreError::Unavailable("the database writer has stopped".into());
            if !sent {
                return Err(stopped());
            }
            rx.await.map_err(|_| stopped())?
        })
    }
}

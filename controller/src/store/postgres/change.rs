//! A change on PostgreSQL: the head's row lock, a batch's statements sent
//! as one pipeline with its change-log entry, and a change holding the
//! lock on its own pooled connection until it commits or is dropped.

use super::*;

/// Take the change log's head and its lock (until the transaction ends).
pub(super) async fn lock_head<C: GenericClient>(c: &C) -> Result<u64, StoreError> {
    let st = c
        .prepare_cached("SELECT seq FROM change_head WHERE id = 1 FOR UPDATE")
        .await
        .map_err(pg)?;
    let head: i64 = c.query_one(&st, &[]).await.map_err(pg)?.get(0);
    Ok(head as u64)
}

/// A batch's statements, and its log entry when it changes regions or
/// sites (the head must be locked at `head` then), sent as one pipeline
/// inside the caller's transaction. Answers the head after it. On error the
/// caller rolls back (a `Write::Fail` fails it after the writes before it).
pub(super) async fn write_batch<C: GenericClient>(
    c: &C,
    head: u64,
    writes: &[Write],
) -> Result<u64, StoreError> {
    let (regions, sites) = crate::store::changed_keys(writes);
    let policy = crate::store::changes_policy(writes);
    let logged = !regions.is_empty() || !sites.is_empty() || policy;
    // Prepare each distinct statement (cached per connection), then send
    // every write as one pipeline.
    let (statements, failure) = statements::for_batch(writes);
    let mut items: Vec<Item> = statements.into_iter().map(Item::from).collect();
    let seq = head + 1;
    if logged && failure.is_none() {
        let names = |v: &[Name]| v.iter().map(|n| n.to_string()).collect::<Vec<String>>();
        items.push(Item::new(
            "INSERT INTO change_log (seq, at, regions, sites, policy) VALUES ($1, $2, $3, $4, $5)",
            vec![
                Box::new(seq as i64),
                Box::new(crate::now()),
                Box::new(names(&regions)),
                Box::new(names(&sites)),
                Box::new(policy),
            ],
        ));
        items.push(Item::new(
            "UPDATE change_head SET seq = $1 WHERE id = 1",
            vec![Box::new(seq as i64)],
        ));
        items.push(Item::new(
            "SELECT pg_notify($1, $2)",
            vec![Box::new(CHANNEL.to_owned()), Box::new(seq.to_string())],
        ));
    }
    let mut prepared = Vec::with_capacity(items.len());
    for it in &items {
        prepared.push(c.prepare_cached(it.sql).await.map_err(pg)?);
    }
    let results = futures::future::join_all(items.iter().zip(&prepared).map(|(it, st)| {
        let params: Vec<&(dyn ToSql + Sync)> = it
            .params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        async move { c.execute(st, &params).await }
    }))
    .await;
    for (it, r) in items.iter().zip(results) {
        let n = r.map_err(pg)?;
        if let Some(err) = &it.exactly_one {
            if n != 1 {
                return Err(StoreError::Precondition(err.clone()));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(if logged { seq } else { head })
}

/// A change holding the head's lock on its own connection (see
/// [`Store::begin_change`]). Plain `BEGIN`/`COMMIT` on a pooled connection
/// it owns; dropped without a commit, it is rolled back.
pub(super) struct PgChange {
    client: Option<deadpool_postgres::Object>,
    head: u64,
}

impl PgChange {
    pub(super) async fn begin(pool: &Pool) -> Result<Self, StoreError> {
        let client = pool.get().await.map_err(pool_error)?;
        client.batch_execute("BEGIN").await.map_err(|e| {
            StoreError::Unavailable(format!("cannot begin a transaction: {}", pg(e)))
        })?;
        let mut me = PgChange {
            client: Some(client),
            head: 0,
        };
        me.head = lock_head(me.client()?).await?;
        Ok(me)
    }

    fn client(&self) -> Result<&deadpool_postgres::Object, StoreError> {
        self.client
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the change has ended".into()))
    }
}

impl Drop for PgChange {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            // Not committed: roll back before the connection is reused.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(rollback(c));
                }
                // Cannot roll back here: the connection must not go back
                // to the pool inside a transaction; closing it ends that.
                Err(_) => drop(deadpool_postgres::Object::take(c)),
            }
        }
    }
}

/// End a change's transaction without committing. A connection whose
/// ROLLBACK fails is in an unknown state: it leaves the pool and closes.
async fn rollback(c: deadpool_postgres::Object) {
    if c.batch_execute("ROLLBACK").await.is_err() {
        drop(deadpool_postgres::Object::take(c));
    }
}

#[async_trait]
impl ChangeTx for PgChange {
    fn head(&self) -> u64 {
        self.head
    }

    async fn changes_since(&mut self, seq: u64) -> Result<CatchUp, StoreError> {
        changes_in(self.client()?, seq, self.head).await
    }

    async fn commit(mut self: Box<Self>, writes: Vec<Write>) -> Result<u64, StoreError> {
        let c = self
            .client
            .take()
            .ok_or_else(|| StoreError::Unavailable("the change has ended".into()))?;
        match write_batch(&c, self.head, &writes).await {
            Ok(seq) => match c.batch_execute("COMMIT").await {
                Ok(()) => Ok(seq),
                Err(e) => {
                    // The connection's state is unknown now: not reused.
                    drop(deadpool_postgres::Object::take(c));
                    Err(match pg(e) {
                        StoreError::Conflict { what } => StoreError::Conflict { what },
                        other => StoreError::Commit(other.to_string()),
                    })
                }
            },
            Err(e) => {
                rollback(c).await;
                Err(e)
            }
        }
    }
}

/// One statement of a pipeline.
struct Item {
    sql: &'static str,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
    /// When set, the statement must touch exactly one row, or the batch
    /// fails with this precondition.
    exactly_one: Option<String>,
}

impl Item {
    /// A statement of this store's own (the change log's).
    fn new(sql: &'static str, params: Vec<Box<dyn ToSql + Sync + Send>>) -> Self {
        Self {
            sql,
            params,
            exactly_one: None,
        }
    }
}

impl From<Statement> for Item {
    fn from(st: Statement) -> Self {
        Self {
            sql: st.sql,
            params: st
                .params
                .into_iter()
                .map(|v| Box::new(v) as Box<dyn ToSql + Sync + Send>)
                .collect(),
            exactly_one: st.exactly_one,
        }
    }
}

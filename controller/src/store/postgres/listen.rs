//! The listener: turns other replicas' NOTIFY into announced heads, and
//! reads the head itself on every (re)connect and every few seconds,
//! because notifications sent while it was away are lost.

use super::*;

/// Follow the change log's announcements into `tx`, reconnecting for as
/// long as anyone holds a receiver.
pub(super) async fn listen(config: tokio_postgres::Config, tx: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match listen_once(&config, &tx).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "lost the database's change notifications; reconnecting");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if tx.is_closed() {
            return;
        }
    }
}

/// One listener connection: LISTEN, read the head (what was announced
/// while nobody listened), then forward every announcement, and read the
/// head again every few seconds. `Ok` when nobody listens any more.
async fn listen_once(
    config: &tokio_postgres::Config,
    tx: &watch::Sender<u64>,
) -> Result<(), StoreError> {
    use futures::StreamExt;
    let (client, mut connection) = config.connect(NoTls).await.map_err(pg)?;
    let (note_tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if note_tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "change listener connection failed");
                    return;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(pg)?;
        let announce = |seq: u64| {
            tx.send_if_modified(|h| {
                if seq > *h {
                    *h = seq;
                    true
                } else {
                    false
                }
            });
        };
        announce(read_head(&client).await?);
        let mut poll = tokio::time::interval(HEAD_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                note = notes.recv() => match note {
                    Some(p) => match p.parse::<u64>() {
                        Ok(seq) => announce(seq),
                        Err(_) => tracing::warn!(payload = %p, "ignoring a change notification that is not a sequence number"),
                    },
                    None => return Err(StoreError::Unavailable("the listener connection closed".into())),
                },
                _ = poll.tick() => announce(read_head(&client).await?),
                () = tx.closed() => return Ok(()),
            }
        }
    }
    .await;
    driver.abort();
    result
}

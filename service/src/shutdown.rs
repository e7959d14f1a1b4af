//! SIGTERM (systemd's stop) and SIGINT (Ctrl-C) as one future.
//!
//! The handlers are installed when [`on_signal`] is called, not when the
//! future is first polled: a daemon calls it before it tells systemd
//! READY=1, so a stop that follows at once is a clean shutdown rather than
//! death by the signal's default action.

use std::future::Future;
use std::io;

use tokio::signal::unix::{signal, SignalKind};

/// A future that resolves on the first SIGTERM or SIGINT after this call.
pub fn on_signal() -> io::Result<impl Future<Output = ()> + Send> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sigterm_right_after_the_call_is_caught() {
        let stop = on_signal().expect("handlers");
        // SAFETY: kill has no memory-safety preconditions; we signal our
        // own process, whose SIGTERM is handled from the call above.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        tokio::time::timeout(std::time::Duration::from_secs(5), stop)
            .await
            .expect("the signal resolves the future");
    }
}

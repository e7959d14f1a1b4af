//! The data plane's writer threads: a second and third core for what the
//! kernel does with our output.
//!
//! Most of a busy agent's CPU is not the crypto but the system calls around
//! it: a `sendmmsg` walks the UDP/IP stack down to the device, and a TUN
//! write runs the receiving side's whole TCP input path in the writer's
//! context. The event loop keeps every decision and all peer state (one
//! owner, no locks); when it has a batch ready it hands the batch to a
//! writer thread and goes on reading and encrypting or decrypting the next
//! one while the kernel takes the last.
//!
//! Order: each writer takes whole batches first in, first out, and the loop
//! fills batches in the order it handles packets, so every peer's packets
//! leave in the order they came.
//!
//! Latency: a thread that sleeps takes tens of microseconds to wake, which a
//! ping or a TCP ACK would pay at every hop. So a small batch (a few
//! packets: interactive traffic, ACKs) is written by the loop itself when
//! the thread is idle, and only what a busy link produces goes across.
//!
//! Queueing: two batches per writer take turns (double buffering). While
//! one is being written the loop fills the other; if that one is ready
//! before the first comes back, it waits, and the loop stops reading what
//! would add to it (the TUN device for UDP output, the socket for TUN
//! output) until it can hand it over. The threads therefore add at most one
//! batch of queueing, and a standing queue stays where CoDel and the ring
//! sizer see it (the socket's receive queue, the TUN device's queue).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

/// A batch a writer thread can write.
pub(super) trait Batch: Send + 'static {
    /// What it is written to (the socket or the device).
    type Target: Send + Sync + 'static;

    /// Packets (or datagrams) queued.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes what the kernel takes without waiting; true when all of it.
    fn try_write(&mut self, target: &Self::Target) -> bool;

    /// Writes everything, waiting for room where the kernel has none; gives
    /// up once `closing` is set.
    fn write_all(&mut self, target: &Self::Target, closing: &AtomicBool);
}

/// Batches up to this many packets are written by the loop when the
/// thread is idle (cheaper than waking it, and no wake-up latency).
const INLINE_MAX: usize = 8;

/// One writer thread and the two batches that take turns on it.
pub(super) struct Writer<B: Batch> {
    /// The batch the loop fills.
    current: B,
    /// The other one, when the thread has given it back.
    spare: Option<B>,
    jobs: Option<std_mpsc::Sender<(B, Arc<B::Target>)>>,
    back: mpsc::UnboundedReceiver<B>,
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<B: Batch> Writer<B> {
    /// Starts the thread `name` (at most 15 bytes: it is the thread's comm).
    pub(super) fn spawn(name: &str, current: B, spare: B) -> io::Result<Self> {
        let (jobs, queue) = std_mpsc::channel::<(B, Arc<B::Target>)>();
        let (give_back, back) = mpsc::unbounded_channel();
        let closing = Arc::new(AtomicBool::new(false));
        let stop = closing.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Ok((mut batch, target)) = queue.recv() {
                    batch.write_all(&target, &stop);
                    // The target goes before the batch comes back: once the
                    // loop has both batches, the thread holds nothing.
                    drop(target);
                    if give_back.send(batch).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Writer {
            current,
            spare: Some(spare),
            jobs: Some(jobs),
            back,
            closing,
            thread: Some(thread),
        })
    }

    /// The batch being filled.
    pub(super) fn current(&mut self) -> &mut B {
        &mut self.current
    }

    /// Nothing waits to be handed over: the loop may read what fills it.
    pub(super) fn is_clear(&self) -> bool {
        self.current.is_empty()
    }

    /// The other batch is with the thread.
    pub(super) fn is_busy(&self) -> bool {
        self.spare.is_none()
    }

    /// Hands the current batch to the thread if it holds anything and the
    /// thread is free (a small one it writes itself); otherwise it stays
    /// and keeps filling. An error means the thread is gone (it panicked):
    /// the data plane cannot go on.
    pub(super) fn hand_off(&mut self, target: &Arc<B::Target>) -> io::Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        if self.spare.is_none() {
            self.spare = self.back.try_recv().ok();
        }
        if self.spare.is_none() {
            return Ok(());
        }
        if self.current.len() <= INLINE_MAX && self.current.try_write(target) {
            return Ok(());
        }
        let Some(spare) = self.spare.take() else {
            return Ok(());
        };
        let full = std::mem::replace(&mut self.current, spare);
        let gone = || io::Error::other("a data-plane writer thread stopped");
        let jobs = self.jobs.as_ref().ok_or_else(gone)?;
        if let Err(std_mpsc::SendError((full, _))) = jobs.send((full, target.clone())) {
            // Keep both batches so the state stays whole for the error path.
            self.spare = Some(std::mem::replace(&mut self.current, full));
            return Err(gone());
        }
        Ok(())
    }

    /// Waits until the thread gives the other batch back (cancel-safe: a
    /// batch received is kept). Never completes if the thread is gone;
    /// `hand_off` reports that.
    pub(super) async fn returned(&mut self) {
        match self.back.recv().await {
            Some(batch) => self.spare = Some(batch),
            None => std::future::pending().await,
        }
    }
}

impl<B: Batch> Drop for Writer<B> {
    /// Stops the thread: what it is writing is cut short, nothing new comes.
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what it writes, in order, into its target.
    struct Log(Vec<u32>);

    impl Batch for Log {
        type Target = Mutex<Vec<u32>>;

        fn len(&self) -> usize {
            self.0.len()
        }

        /// Takes nothing inline: every batch goes to the thread.
        fn try_write(&mut self, _target: &Self::Target) -> bool {
            false
        }

        fn write_all(&mut self, target: &Self::Target, _closing: &AtomicBool) {
            target.lock().expect("test lock").append(&mut self.0);
        }
    }

    #[tokio::test]
    async fn batches_are_written_in_order_and_two_take_turns() {
        let target = Arc::new(Mutex::new(Vec::new()));
        let mut writer =
            Writer::spawn("wardnet-test", Log(Vec::new()), Log(Vec::new())).expect("thread");
        let mut next = 0;
        for _ in 0..200 {
            for _ in 0..3 {
                writer.current().0.push(next);
                next += 1;
            }
            writer.hand_off(&target).expect("thread alive");
            if writer.is_busy() && !writer.is_clear() {
                // Both batches taken: the loop waits for one back.
                writer.returned().await;
                writer.hand_off(&target).expect("thread alive");
            }
            assert!(writer.is_clear(), "handed over once a batch came back");
        }
        while writer.is_busy() {
            writer.returned().await;
        }
        let written = target.lock().expect("test lock").clone();
        assert_eq!(written, (0..next).collect::<Vec<_>>());
    }

    /// Takes anything inline.
    struct Eager(Vec<u32>);

    impl Batch for Eager {
        type Target = Mutex<Vec<u32>>;

        fn len(&self) -> usize {
            self.0.len()
        }

        fn try_write(&mut self, target: &Self::Target) -> bool {
            target.lock().expect("test lock").append(&mut self.0);
            true
        }

        fn write_all(&mut self, target: &Self::Target, _closing: &AtomicBool) {
            target.lock().expect("test lock").append(&mut self.0);
        }
    }

    #[tokio::test]
    async fn a_small_batch_is_written_by_the_loop_a_large_one_by_the_thread() {
        let target = Arc::new(Mutex::new(Vec::new()));
        let mut writer =
            Writer::spawn("wardnet-test", Eager(Vec::new()), Eager(Vec::new())).expect("thread");
        writer.current().0.extend(0..INLINE_MAX as u32);
        writer.hand_off(&target).expect("thread alive");
        assert!(
            !writer.is_busy(),
            "written inline: the thread was not woken"
        );
        assert_eq!(target.lock().expect("test lock").len(), INLINE_MAX);

        writer.current().0.extend(0..=INLINE_MAX as u32);
        writer.hand_off(&target).expect("thread alive");
        assert!(writer.is_busy(), "the larger batch went to the thread");
        writer.returned().await;
        assert_eq!(target.lock().expect("test lock").len(), 2 * INLINE_MAX + 1);
    }

    /// A writer whose batches never finish on their own: `write_all` spins
    /// until the data plane closes.
    struct Stuck;

    impl Batch for Stuck {
        type Target = ();

        fn len(&self) -> usize {
            1
        }

        fn try_write(&mut self, _target: &()) -> bool {
            false
        }

        fn write_all(&mut self, _target: &(), closing: &AtomicBool) {
            while !closing.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    #[test]
    fn dropping_the_writer_stops_a_thread_that_is_waiting_for_room() {
        let mut writer = Writer::spawn("wardnet-test", Stuck, Stuck).expect("thread");
        writer.hand_off(&Arc::new(())).expect("thread alive");
        assert!(writer.is_busy());
        drop(writer); // returns only once the thread has ended
    }
}

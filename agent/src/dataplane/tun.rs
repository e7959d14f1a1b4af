//! Batched TUN I/O with Linux offload (the virtio-net header: GSO on reads,
//! GRO on writes). A TCP flow through the tunnel then crosses the TUN device
//! as ~64 KiB super-packets: one read yields dozens of MTU-sized segments to
//! encrypt, and the decrypted segments of one wake-up are coalesced back into
//! a few large writes, so the kernel's TCP stack on either side handles one
//! packet where it used to handle forty. Same idea as wireguard-go's
//! `tun/offload_linux.go`, implemented for us by tun-rs.

use std::io;
use std::sync::atomic::AtomicBool;

use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::core::BUF_SIZE;

/// Headroom in front of each packet written, where the virtio header goes.
const WRITE_OFFSET: usize = VIRTIO_NET_HDR_LEN;

/// Decrypted packets one batch holds while the writer thread still has the
/// other; beyond this they are dropped, as on a full NIC queue (the loop
/// stops reading the socket long before: this is one wake-up's worth).
const WRITE_QUEUE_MAX: usize = 4 * IDEAL_BATCH_SIZE;

/// One read's segments.
pub(super) struct TunRead {
    original: Box<[u8]>,
    bufs: Vec<Box<[u8]>>,
    sizes: Vec<usize>,
}

impl TunRead {
    pub(super) fn new() -> Self {
        TunRead {
            original: vec![0u8; VIRTIO_NET_HDR_LEN + BUF_SIZE].into_boxed_slice(),
            // Zeroed allocations are mapped lazily: only touched pages cost.
            bufs: (0..IDEAL_BATCH_SIZE)
                .map(|_| vec![0u8; BUF_SIZE].into_boxed_slice())
                .collect(),
            sizes: vec![0; IDEAL_BATCH_SIZE],
        }
    }

    /// One non-blocking read, split into IP packets; returns their number.
    pub(super) fn recv(&mut self, tun: &AsyncDevice) -> io::Result<usize> {
        tun.try_recv_multiple(&mut self.original, &mut self.bufs, &mut self.sizes, 0)
    }

    pub(super) fn get(&self, i: usize) -> Option<&[u8]> {
        self.bufs.get(i)?.get(..*self.sizes.get(i)?)
    }
}

/// Decrypted packets waiting to be written, coalesced on flush.
pub(super) struct TunWrite {
    bufs: Vec<Vec<u8>>,
    len: usize,
    gro: GROTable,
}

impl TunWrite {
    pub(super) fn new() -> Self {
        TunWrite {
            bufs: Vec::new(),
            len: 0,
            gro: GROTable::default(),
        }
    }

    /// Enough for one write: hand it over now if the thread is free.
    pub(super) fn is_full(&self) -> bool {
        self.len >= IDEAL_BATCH_SIZE
    }

    /// Room for a packet of up to `len` bytes after what is queued, to be
    /// written in place (decrypted straight into it) and queued with
    /// `commit`, or left and overwritten by the next one.
    pub(super) fn room(&mut self, len: usize) -> &mut [u8] {
        if self.len == self.bufs.len() {
            // GRO appends the following segments of a flow to the first
            // one's buffer and skips coalescing when it lacks capacity, so
            // every buffer can hold a full 64 KiB super-packet (allocated,
            // not touched: pages are mapped as they fill).
            self.bufs
                .push(Vec::with_capacity(2 * WRITE_OFFSET + BUF_SIZE));
        }
        let b = &mut self.bufs[self.len];
        // Only what the buffer has never held is zeroed: a reused buffer is
        // overwritten, not cleared first.
        let end = WRITE_OFFSET + len;
        if b.len() < end {
            b.resize(end, 0);
        }
        &mut b[WRITE_OFFSET..end]
    }

    /// Queues the first `len` bytes of the last `room`; false (dropped)
    /// when the batch is at its limit.
    pub(super) fn commit(&mut self, len: usize) -> bool {
        if self.len >= WRITE_QUEUE_MAX {
            return false;
        }
        let Some(b) = self.bufs.get_mut(self.len) else {
            return false;
        };
        b.truncate(WRITE_OFFSET + len);
        self.len += 1;
        true
    }

    /// Writes everything queued. The device never makes us wait in practice
    /// (a TUN write hands the packet to the stack); if it refuses, the
    /// packets are dropped like on a full NIC queue and TCP recovers.
    fn flush(&mut self, tun: &AsyncDevice) {
        if self.len == 0 {
            return;
        }
        let n = std::mem::take(&mut self.len);
        // The synchronous call on the non-blocking descriptor: it never
        // waits, and we never await the device's writability.
        if let Err(e) = (**tun).send_multiple(&mut self.gro, &mut self.bufs[..n], WRITE_OFFSET) {
            tracing::debug!(error = %e, "TUN write failed");
        }
    }
}

impl super::output::Batch for TunWrite {
    type Target = AsyncDevice;

    fn len(&self) -> usize {
        self.len
    }

    fn try_write(&mut self, tun: &AsyncDevice) -> bool {
        self.flush(tun);
        true
    }

    fn write_all(&mut self, tun: &AsyncDevice, _closing: &AtomicBool) {
        self.flush(tun);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_buffer_holds_exactly_the_new_packet_and_the_batch_is_bounded() {
        let mut w = TunWrite::new();
        w.room(1400).fill(0xaa);
        assert!(w.commit(1400));
        // As after a write: the buffers are reused, not cleared.
        w.len = 0;
        w.room(60).fill(0xbb);
        assert!(w.commit(60));
        assert_eq!(w.bufs[0].len(), WRITE_OFFSET + 60);
        assert!(w.bufs[0][WRITE_OFFSET..].iter().all(|&b| b == 0xbb));

        for _ in 1..WRITE_QUEUE_MAX {
            w.room(20).fill(1);
            assert!(w.commit(20));
        }
        w.room(20).fill(2);
        assert!(
            !w.commit(20),
            "one wake-up's worth at most; the rest is dropped"
        );
        assert_eq!(w.len, WRITE_QUEUE_MAX);
    }
}

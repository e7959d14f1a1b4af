//! Batched TUN I/O with Linux offload (the virtio-net header: GSO on reads,
//! GRO on writes). A TCP flow through the tunnel then crosses the TUN device
//! as ~64 KiB super-packets: one read yields dozens of MTU-sized segments to
//! encrypt, and the decrypted segments of one wake-up are coalesced back into
//! a few large writes, so the kernel's TCP stack on either side handles one
//! packet where it used to handle forty. Same idea as wireguard-go's
//! `tun/offload_linux.go`, implemented for us by tun-rs.

use std::io;

use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::core::BUF_SIZE;

/// Headroom in front of each packet written, where the virtio header goes.
const WRITE_OFFSET: usize = VIRTIO_NET_HDR_LEN;

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

    pub(super) fn is_full(&self) -> bool {
        self.len >= IDEAL_BATCH_SIZE
    }

    pub(super) fn push(&mut self, packet: &[u8]) {
        if self.len == self.bufs.len() {
            // GRO appends the following segments of a flow to the first
            // one's buffer and skips coalescing when it lacks capacity, so
            // every buffer can hold a full 64 KiB super-packet (allocated,
            // not touched: pages are mapped as they fill).
            self.bufs
                .push(Vec::with_capacity(2 * WRITE_OFFSET + BUF_SIZE));
        }
        if let Some(b) = self.bufs.get_mut(self.len) {
            b.clear();
            b.resize(WRITE_OFFSET, 0);
            b.extend_from_slice(packet);
            self.len += 1;
        }
    }

    /// Writes everything queued. The device never makes us wait in practice
    /// (a TUN write hands the packet to the stack); if it refuses, the
    /// packets are dropped like on a full NIC queue and TCP recovers.
    pub(super) fn flush(&mut self, tun: &AsyncDevice) {
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

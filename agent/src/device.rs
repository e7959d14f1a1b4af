//! The two seams between the agent's event loop and the host: the WireGuard
//! device (peers, MTU, listen port, a snapshot for `status`) and the
//! interface's addresses and routes. The real ones are the userspace data
//! plane and netlink; the in-memory ones let the whole agent run in a test
//! without root.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use wardnet_common::filter::SiteFilter;

use ipnet::IpNet;
use wardnet_common::PublicKey;

use crate::dataplane::{DataPlaneError, DataPlaneHandle};
use crate::device_snapshot::{DeviceSnapshot, Handshakes, PeerSnapshot};
use crate::netlink::{Netlink, NetlinkError};
use crate::reconcile::PeerOp;

/// The WireGuard device.
pub trait Device: Send + Sync + 'static {
    /// Apply peer operations in order (lenient: see `DataPlaneHandle::apply`).
    fn apply(&self, ops: Vec<PeerOp>) -> impl Future<Output = Result<(), DeviceError>> + Send;
    fn set_mtu(&self, mtu: u16) -> impl Future<Output = Result<(), DeviceError>> + Send;
    fn set_listen_port(&self, port: u16) -> impl Future<Output = Result<(), DeviceError>> + Send;
    /// Replace the policy filter on what comes out of the tunnels (`None`:
    /// let everything through).
    fn set_filter(
        &self,
        filter: Option<SiteFilter>,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;
    /// What runs now; empty when the device has stopped.
    fn snapshot(&self) -> impl Future<Output = DeviceSnapshot> + Send;
    /// Each peer's last handshake; empty when the device has stopped.
    fn handshakes(&self) -> impl Future<Output = Handshakes> + Send;
}

/// The interface's addresses and routes.
pub trait Routes: Send + Sync + 'static {
    /// Make the interface's addresses and routes these, by difference.
    fn apply(
        &self,
        addresses: &BTreeSet<IpNet>,
        routes: &BTreeSet<IpNet>,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// From the in-memory device, when a test asks it to fail.
    #[error("{0}")]
    Injected(String),
}

impl Device for DataPlaneHandle {
    async fn apply(&self, ops: Vec<PeerOp>) -> Result<(), DeviceError> {
        Ok(DataPlaneHandle::apply(self, ops).await?)
    }
    async fn set_mtu(&self, mtu: u16) -> Result<(), DeviceError> {
        Ok(DataPlaneHandle::set_mtu(self, mtu).await?)
    }
    async fn set_listen_port(&self, port: u16) -> Result<(), DeviceError> {
        Ok(DataPlaneHandle::set_listen_port(self, port).await?)
    }
    async fn set_filter(&self, filter: Option<SiteFilter>) -> Result<(), DeviceError> {
        Ok(DataPlaneHandle::set_filter(self, filter).await?)
    }
    async fn snapshot(&self) -> DeviceSnapshot {
        DataPlaneHandle::snapshot(self).await.unwrap_or_default()
    }
    async fn handshakes(&self) -> Handshakes {
        DataPlaneHandle::handshakes(self).await.unwrap_or_default()
    }
}

/// Addresses and routes of one interface, through netlink.
pub struct KernelRoutes {
    pub netlink: Netlink,
    pub ifindex: u32,
}

impl Routes for KernelRoutes {
    async fn apply(
        &self,
        addresses: &BTreeSet<IpNet>,
        routes: &BTreeSet<IpNet>,
    ) -> Result<(), DeviceError> {
        let changed = self.netlink.apply(self.ifindex, addresses, routes).await?;
        tracing::debug!(
            addresses_added = changed.added_addresses.len(),
            routes_added = changed.added_routes.len(),
            routes_removed = changed.removed_routes.len(),
            "addresses and routes applied"
        );
        Ok(())
    }
}

/// An in-memory device: keeps the peers it was given, shakes hands with
/// nobody. Clones share the same state, so a test keeps one to look at.
#[derive(Clone, Default)]
pub struct MemoryDevice {
    inner: Arc<Mutex<MemoryDeviceState>>,
}

#[derive(Default)]
struct MemoryDeviceState {
    peers: BTreeMap<PublicKey, PeerSnapshot>,
    listen_port: u16,
    /// The policy filter last set.
    filter: Option<SiteFilter>,
    /// The next `apply` fails with this.
    fail_next: Option<String>,
    applies: usize,
}

impl MemoryDevice {
    pub fn new(listen_port: u16) -> Self {
        let d = MemoryDevice::default();
        d.lock().listen_port = listen_port;
        d
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryDeviceState> {
        // A test that panicked while holding it has failed already.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Make the next `apply` fail (as a full device or a netlink error would).
    pub fn fail_next_apply(&self, why: &str) {
        self.lock().fail_next = Some(why.into());
    }

    /// How many `apply` calls succeeded.
    pub fn applies(&self) -> usize {
        self.lock().applies
    }

    /// Pretend a handshake with the peer `key` completed at `at`.
    pub fn handshake(&self, key: &PublicKey, at: std::time::SystemTime) {
        if let Some(p) = self.lock().peers.get_mut(key) {
            p.last_handshake = Some(at);
        }
    }
}

impl Device for MemoryDevice {
    async fn apply(&self, ops: Vec<PeerOp>) -> Result<(), DeviceError> {
        let mut s = self.lock();
        if let Some(why) = s.fail_next.take() {
            return Err(DeviceError::Injected(why));
        }
        for op in ops {
            match op {
                PeerOp::RemovePeer(k) => {
                    s.peers.remove(&k);
                }
                PeerOp::AddPeer(c) | PeerOp::UpdatePeer(c) => {
                    let kept = s.peers.remove(&c.public_key);
                    s.peers.insert(
                        c.public_key,
                        PeerSnapshot {
                            name: c.name,
                            public_key: c.public_key,
                            endpoint: c.endpoint.map(|e| e.addr()),
                            allowed_ips: c.allowed_ips,
                            persistent_keepalive: c.persistent_keepalive,
                            last_handshake: kept.as_ref().and_then(|p| p.last_handshake),
                            rx_bytes: kept.as_ref().map_or(0, |p| p.rx_bytes),
                            tx_bytes: kept.as_ref().map_or(0, |p| p.tx_bytes),
                            policy_denied: 0,
                        },
                    );
                }
            }
        }
        s.applies += 1;
        Ok(())
    }

    /// Memory has no MTU: nothing to set.
    async fn set_mtu(&self, _mtu: u16) -> Result<(), DeviceError> {
        Ok(())
    }

    async fn set_listen_port(&self, port: u16) -> Result<(), DeviceError> {
        self.lock().listen_port = port;
        Ok(())
    }

    async fn set_filter(&self, filter: Option<SiteFilter>) -> Result<(), DeviceError> {
        self.lock().filter = filter;
        Ok(())
    }

    async fn snapshot(&self) -> DeviceSnapshot {
        let s = self.lock();
        DeviceSnapshot {
            listen_port: s.listen_port,
            peers: s.peers.values().cloned().collect(),
            counters: Default::default(),
            policy: Default::default(),
        }
    }

    async fn handshakes(&self) -> Handshakes {
        let s = self.lock();
        s.peers
            .values()
            .map(|p| (p.name.clone(), p.last_handshake))
            .collect()
    }
}

/// In-memory addresses and routes. Clones share the same state.
#[derive(Clone, Default)]
pub struct MemoryRoutes {
    inner: Arc<Mutex<(BTreeSet<IpNet>, BTreeSet<IpNet>)>>,
}

impl MemoryRoutes {
    /// The addresses and routes set now.
    pub fn get(&self) -> (BTreeSet<IpNet>, BTreeSet<IpNet>) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Routes for MemoryRoutes {
    async fn apply(
        &self,
        addresses: &BTreeSet<IpNet>,
        routes: &BTreeSet<IpNet>,
    ) -> Result<(), DeviceError> {
        *self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            (addresses.clone(), routes.iter().map(IpNet::trunc).collect());
        Ok(())
    }
}

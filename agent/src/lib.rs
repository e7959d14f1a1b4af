//! wardnet agent: brings a site gateway's WireGuard tunnels up in userspace
//! (boringtun's Noise core driven by our own event loop on a TUN device),
//! keeps them in step with the controller, and answers `wg show`.

pub mod agent_state;
pub(crate) mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub(crate) mod daemon;
pub mod dataplane;
pub mod device;
pub mod device_snapshot;
pub mod eventloop;
pub(crate) mod failover;
pub mod forwarding;
pub(crate) mod handle;
pub mod health;
pub mod http;
pub(crate) mod metrics;
pub mod netlink;
pub mod reconcile;
pub mod state_dir;
pub(crate) mod status;
pub mod sync;
pub mod uapi;

/// Select rustls' crypto provider (ring) for this process, once.
pub fn init_crypto() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub use wardnet_service::{logging, notify};

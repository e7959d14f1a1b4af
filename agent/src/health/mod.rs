//! Link health: probes over the tunnel to every peer (ICMP echo to the
//! peer's overlay address), the up/down rule, loss and RTT, and the summary
//! the controller gets. `probe`, `icmp` and `summary` are pure; `io` is the
//! thin shell that moves the probe packets.

pub mod icmp;
pub mod io;
pub mod probe;
pub mod summary;

pub use probe::{
    link_state, probe_address, LinkState, ProbeConfig, ProbeTarget, ProbeToSend, ProbeView,
    Scheduler,
};
pub use summary::{summarize, PeerHealth};

//! Running a wardnet daemon as a service: systemd notification
//! (`notify`) and the log formats for a terminal, the journal and JSON
//! (`logging`). Shared by `wardnet-agent` and `wardnet-controller`.

pub mod config;
pub mod logging;
pub mod notify;

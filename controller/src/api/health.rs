//! Fleet health routes: `GET /v1/health` (every site's liveness and last
//! health summary) and `GET /v1/prometheus/targets` (the agents' metrics
//! endpoints in Prometheus file_sd / http_sd format).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::extract::Admin;
use crate::error::Error;
use crate::pipeline::Controller;

type Ctl = State<Arc<Controller>>;

/// A scoped admin sees its own organisation's sites only.
pub(super) async fn fleet(State(c): Ctl, Admin(actor): Admin) -> Result<Response, Error> {
    let (now, window) = (c.now(), c.online_window_secs());
    let reports = c.reports();
    let fleet = c.with_model(|m| {
        let sites = m
            .sites
            .values()
            .map(|s| &**s)
            .filter(|s| actor.sees(&s.org));
        crate::health::fleet_health(sites, &reports, now, window)
    });
    Ok(axum::Json(fleet).into_response())
}

/// The same JSON serves a file_sd file (`wardnet-controller prometheus
/// targets > agents.json`) and Prometheus' `http_sd_configs` directly; a
/// scoped token lists its own organisation's agents (its own Prometheus).
pub(super) async fn targets(State(c): Ctl, Admin(actor): Admin) -> Result<Response, Error> {
    let reports = c.reports();
    let groups = c.with_model(|m| {
        let sites = m
            .sites
            .values()
            .map(|s| &**s)
            .filter(|s| actor.sees(&s.org));
        crate::health::file_sd(sites, &reports)
    });
    Ok(axum::Json(groups).into_response())
}

//! `GET /metrics`: the controller's registry, with the gauges that are read
//! from the published world refreshed at each scrape.

use prometheus::{Encoder, TextEncoder};
use wardnet_common::Name;

use crate::pipeline::Controller;

/// Render `/metrics` for a controller.
pub(super) fn render(c: &Controller) -> String {
    let m = &c.metrics;
    m.sites.reset();
    c.with_model(|model| {
        for s in model.sites.values() {
            m.sites
                .with_label_values(&[s.region.as_str(), s.role.as_str(), s.state.as_str()])
                .inc();
        }
    });
    m.region_hubs.reset();
    m.region_hubs_online.reset();
    // Hubs only: a region's spokes (and their hub assignment, which
    // `regions show` computes) are not read at every scrape.
    let now = c.now();
    let window = c.online_window_secs();
    let hubs: Vec<(Name, Vec<Name>)> = c.with_model(|model| {
        model
            .regions
            .keys()
            .map(|r| {
                (
                    r.clone(),
                    model.region_hubs(r).map(|h| h.name.clone()).collect(),
                )
            })
            .collect()
    });
    for (region, names) in hubs {
        let online = names
            .iter()
            .filter(|h| crate::health::online(c.report_of(h).last_seen, now, window))
            .count();
        m.region_hubs
            .with_label_values(&[region.as_str()])
            .set(names.len() as i64);
        m.region_hubs_online
            .with_label_values(&[region.as_str()])
            .set(online as i64);
    }
    let status = c.status(&crate::ops::Actor::local());
    m.waiters.set(c.long_poll_waiters());
    m.agents_online.set(status.agents_online as i64);
    m.pending_delivery
        .set(status.configs_pending_delivery as i64);
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&m.registry.gather(), &mut buf)
        .expect("encoding gathered metrics into memory cannot fail");
    String::from_utf8(buf).expect("the Prometheus text format is UTF-8")
}

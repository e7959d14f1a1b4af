//! wg-quick export for agentless appliances (`sites export`).
//!
//! The private key is not in the file: it is generated on the appliance and
//! never leaves it, so the export carries a commented placeholder for the
//! admin to fill in on the appliance itself. wg-quick adds a route for every
//! AllowedIP, which matches the config's routes (they are the minimal cover of
//! the AllowedIPs).

use wardnet_common::wire::SiteConfig;

/// The site's config as a wg-quick file.
pub(crate) fn wg_quick(cfg: &SiteConfig) -> String {
    fn join<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
        items
            .into_iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
    let mut lines = vec![
        format!(
            "# wardnet: site {} ({}, region {}), revision {}",
            cfg.site, cfg.role, cfg.region, cfg.revision
        ),
        "[Interface]".to_owned(),
        "# PrivateKey = <the appliance's own private key; it never leaves the appliance>"
            .to_owned(),
        "# Fill in the line above on the appliance and uncomment it (wg genkey creates one);"
            .to_owned(),
        "# its public key (wg pubkey) is the one registered for this site.".to_owned(),
        format!("Address = {}", join(&cfg.interface.addresses)),
        format!("ListenPort = {}", cfg.interface.listen_port),
        format!("MTU = {}", cfg.interface.mtu),
    ];
    for p in &cfg.peers {
        lines.push(String::new());
        lines.push("[Peer]".to_owned());
        lines.push(format!("# {} ({}, region {})", p.name, p.role, p.region));
        lines.push(format!("PublicKey = {}", p.public_key));
        lines.push(format!("AllowedIPs = {}", join(&p.allowed_ips)));
        if let Some(e) = p.endpoint {
            lines.push(format!("Endpoint = {e}"));
        }
        if let Some(k) = p.persistent_keepalive {
            lines.push(format!("PersistentKeepalive = {k}"));
        }
    }
    lines.push(String::new());
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_a_wg_quick_file() {
        let cfg: SiteConfig = serde_json::from_str(
            r#"{
              "revision": 4, "site": "gp-a", "region": "north", "role": "spoke",
              "interface": {"addresses": ["100.64.0.2/32", "fd7a:6e65::2/128"], "listen_port": 51820, "mtu": 1420},
              "peers": [
                {"name": "gp-b", "region": "north", "role": "spoke",
                 "public_key": "hlfg+LViqRWy5VtknOiHv1RiNp39RADb9kWL2IGZreY=",
                 "allowed_ips": ["100.64.0.3/32"]},
                {"name": "hub-north", "region": "north", "role": "hub",
                 "public_key": "o1PltapkilkcuAtfM6MUN1JnXUwnG4UuP0ZuE/hgg0o=",
                 "endpoint": "198.51.100.1:51820",
                 "allowed_ips": ["100.64.0.0/10", "10.0.0.0/8", "fd7a:6e65::/48"],
                 "persistent_keepalive": 25}
              ],
              "routes": ["10.0.0.0/8", "100.64.0.0/10", "fd7a:6e65::/48"]
            }"#,
        )
        .expect("valid config");
        let expected = "\
# wardnet: site gp-a (spoke, region north), revision 4
[Interface]
# PrivateKey = <the appliance's own private key; it never leaves the appliance>
# Fill in the line above on the appliance and uncomment it (wg genkey creates one);
# its public key (wg pubkey) is the one registered for this site.
Address = 100.64.0.2/32, fd7a:6e65::2/128
ListenPort = 51820
MTU = 1420

[Peer]
# gp-b (spoke, region north)
PublicKey = hlfg+LViqRWy5VtknOiHv1RiNp39RADb9kWL2IGZreY=
AllowedIPs = 100.64.0.3/32

[Peer]
# hub-north (hub, region north)
PublicKey = o1PltapkilkcuAtfM6MUN1JnXUwnG4UuP0ZuE/hgg0o=
AllowedIPs = 10.0.0.0/8, 100.64.0.0/10, fd7a:6e65::/48
Endpoint = 198.51.100.1:51820
PersistentKeepalive = 25
";
        assert_eq!(wg_quick(&cfg), expected);
    }
}

//! What both daemons' TOML configs share: `WARDNET_*` environment overrides.

/// Set a dotted key (`network.overlay_ipv4`) from an environment string,
/// keeping TOML types: integers and booleans stay integers and booleans, so
/// validation reports a wrong type the same way as it would in the file.
pub fn set_key(table: &mut toml::Table, key: &str, raw: &str) {
    let value = if let Ok(i) = raw.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = raw.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(raw.to_owned())
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut cur = table;
    for p in parts {
        let entry = cur
            .entry(p.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(t) = entry else { return };
        cur = t;
    }
    cur.insert(last.to_owned(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nested_keys_with_types() {
        let mut t = toml::Table::new();
        set_key(&mut t, "long_poll.timeout_secs", "5");
        set_key(&mut t, "plain_http", "true");
        set_key(&mut t, "listen", "127.0.0.1:1");
        assert_eq!(t["long_poll"]["timeout_secs"], toml::Value::Integer(5));
        assert_eq!(t["plain_http"], toml::Value::Boolean(true));
        assert_eq!(t["listen"], toml::Value::String("127.0.0.1:1".into()));
    }
}

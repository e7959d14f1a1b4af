//! What both daemons' TOML configs share: `WARDNET_*` environment overrides
//! and naming the key (or variable) a config error is about.

use std::path::PathBuf;

/// Exit code for a usage or configuration error (sysexits EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

/// A config that cannot be used, naming the file and key, or the
/// environment variable, and what was expected. Both daemons exit with
/// [`EXIT_USAGE`] on one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {file}: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("config file {file}: key `{key}`: {message}")]
    Key {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("environment variable {var} (it sets key `{key}`): {message}")]
    Env {
        var: &'static str,
        key: String,
        message: String,
    },
    /// A file the config names cannot be used (the message says which and
    /// how to fix it).
    #[error("{message}")]
    File { message: String },
}

impl ConfigError {
    /// Blame the environment variable that set the key, if one did.
    pub fn blame_env(self, applied: &[(&'static str, &'static str)]) -> Self {
        match self {
            ConfigError::Key { key, message, file } => match env_var_for(applied, &key) {
                Some(var) => ConfigError::Env { var, key, message },
                None => ConfigError::Key { file, key, message },
            },
            other => other,
        }
    }
}

/// Set every `(variable, key)` of `overrides` that `env` has into `table`;
/// return the ones set, so an error about one of those keys can name the
/// variable instead of blaming the file.
pub fn apply_env(
    table: &mut toml::Table,
    overrides: &[(&'static str, &'static str)],
    env: impl Fn(&str) -> Option<String>,
) -> Vec<(&'static str, &'static str)> {
    let mut applied = Vec::new();
    for &(var, key) in overrides {
        if let Some(v) = env(var) {
            set_key(table, key, &v);
            applied.push((var, key));
        }
    }
    applied
}

/// The variable that set `key`, if one did.
pub fn env_var_for(applied: &[(&'static str, &'static str)], key: &str) -> Option<&'static str> {
    applied
        .iter()
        .find(|(_, k)| {
            *k == key
                || key
                    .strip_prefix(k)
                    .is_some_and(|r| r.starts_with(['.', '[']))
        })
        .map(|(v, _)| *v)
}

/// The dotted key and message of a deserialisation error. serde reports a
/// missing key as "missing field `x`" at the path of its parent (`.` at the
/// top), so name the missing key itself.
pub fn error_key(path: &str, message: &str) -> (String, String) {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|r| r.split_once('`'))
        .map(|(f, _)| f);
    match missing {
        Some(field) => {
            let key = if path == "." || path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            (key, "is required but missing".to_owned())
        }
        None => (path.to_owned(), message.to_owned()),
    }
}

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
    fn names_missing_keys_and_sections() {
        assert_eq!(
            error_key(".", "missing field `network`"),
            ("network".to_owned(), "is required but missing".to_owned())
        );
        assert_eq!(
            error_key("network", "missing field `overlay_ipv4`").0,
            "network.overlay_ipv4"
        );
        assert_eq!(error_key("mtu", "invalid type").0, "mtu");
    }

    #[test]
    fn finds_the_variable_behind_a_key() {
        let mut t = toml::Table::new();
        let env = |v: &str| (v == "WARDNET_MTU").then(|| "x".to_owned());
        let applied = apply_env(
            &mut t,
            &[("WARDNET_MTU", "network.mtu"), ("WARDNET_X", "x")],
            env,
        );
        assert_eq!(env_var_for(&applied, "network.mtu"), Some("WARDNET_MTU"));
        assert_eq!(env_var_for(&applied, "network.mtu_other"), None);
        assert_eq!(env_var_for(&applied, "x"), None);
    }

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

//! What enrolment leaves on the site, in the state directory (0700):
//! `private.key` (the site's WireGuard key, generated here, never sent
//! anywhere), `enrolment.json` (site identity, controller URL, agent
//! credential) and `config.json` (the last applied config, the cache the
//! agent starts from when the controller is unreachable). All files 0600,
//! written atomically (temp file, fsync, rename, fsync of the directory).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wardnet_common::wire::SiteConfig;
use wardnet_common::{Name, PrivateKey, Role};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("this gateway is not enrolled: {path} does not exist. Run `wardnet-agent enroll --controller URL --token-file -` (paste the token from the NOC) first")]
    NotEnrolled { path: PathBuf },
    #[error("this gateway is already enrolled as site {site} ({path}); pass --force to replace its key and identity")]
    AlreadyEnrolled { site: Name, path: PathBuf },
}

/// The site identity and credential from enrolment.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolment {
    pub site: Name,
    pub region: Name,
    pub role: Role,
    pub addresses: BTreeSet<IpNet>,
    pub controller_url: String,
    /// Secret: the agent credential for `/v1/agent/*`.
    pub credential: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    #[serde(default)]
    pub allow_plain_http: bool,
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolment")
            .field("site", &self.site)
            .field("region", &self.region)
            .field("role", &self.role)
            .field("controller_url", &self.controller_url)
            .field("credential", &"<redacted>")
            .finish()
    }
}

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
        move |source| StateError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Create the directory (0700) if needed.
    pub fn create(&self) -> Result<(), StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(Self::io(&self.dir))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(Self::io(&self.dir))
    }

    /// Refuse to overwrite an existing enrolment unless `force`.
    pub fn check_fresh(&self, force: bool) -> Result<(), StateError> {
        if force {
            return Ok(());
        }
        match self.enrolment() {
            Ok(e) => Err(StateError::AlreadyEnrolled {
                site: e.site,
                path: self.file("enrolment.json"),
            }),
            Err(_) => Ok(()),
        }
    }

    pub fn save_key(&self, key: &PrivateKey) -> Result<(), StateError> {
        write_atomic(
            &self.file("private.key"),
            format!("{}\n", key.to_base64()).as_bytes(),
        )
    }

    pub fn key(&self) -> Result<PrivateKey, StateError> {
        let path = self.file("private.key");
        let text = read_existing(&path)?;
        text.trim().parse().map_err(|e| StateError::Invalid {
            path,
            message: format!("{e}"),
        })
    }

    pub fn save_enrolment(&self, e: &Enrolment) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(e).expect("serialising plain data cannot fail");
        write_atomic(&self.file("enrolment.json"), &json)
    }

    pub fn enrolment(&self) -> Result<Enrolment, StateError> {
        let path = self.file("enrolment.json");
        let text = read_existing(&path)?;
        serde_json::from_str(&text).map_err(|e| StateError::Invalid {
            path,
            message: e.to_string(),
        })
    }

    /// The cached last applied config, if any.
    pub fn cached_config(&self) -> Result<Option<SiteConfig>, StateError> {
        let path = self.file("config.json");
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StateError::Invalid {
                    path,
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    pub fn save_config(&self, c: &SiteConfig) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(c).expect("serialising plain data cannot fail");
        write_atomic(&self.file("config.json"), &json)
    }

    /// Forget the cached config (a new enrolment starts clean).
    pub fn clear_config(&self) -> Result<(), StateError> {
        let path = self.file("config.json");
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

fn read_existing(path: &Path) -> Result<String, StateError> {
    fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StateError::NotEnrolled {
                path: path.to_owned(),
            }
        } else {
            StateError::Io {
                path: path.to_owned(),
                source: e,
            }
        }
    })
}

/// Write a file so that a crash leaves either the old or the new content,
/// never a torn one: temp file (0600) in the same directory, fsync, rename,
/// fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
        std::process::id()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn files_are_private_and_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let s = StateDir::new(tmp.path().join("state"));
        s.create().expect("create");
        let key = PrivateKey::generate();
        s.save_key(&key).expect("save key");
        assert_eq!(s.key().expect("key").public_key(), key.public_key());
        let e = Enrolment {
            site: "gp-a".parse().expect("name"),
            region: "north".parse().expect("name"),
            role: Role::Spoke,
            addresses: BTreeSet::new(),
            controller_url: "https://c:8443".into(),
            credential: "wna_secret".into(),
            ca_cert: None,
            allow_plain_http: false,
        };
        s.save_enrolment(&e).expect("save");
        assert!(!format!("{e:?}").contains("wna_secret"));
        for f in ["private.key", "enrolment.json"] {
            let mode = fs::metadata(tmp.path().join("state").join(f))
                .expect("meta")
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let mode = fs::metadata(tmp.path().join("state")).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(matches!(
            s.check_fresh(false),
            Err(StateError::AlreadyEnrolled { .. })
        ));
        assert!(s.check_fresh(true).is_ok());
        assert!(s.cached_config().expect("no cache").is_none());
    }

    #[test]
    fn missing_state_says_how_to_enrol() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let e = StateDir::new(tmp.path()).enrolment().expect_err("missing");
        assert!(e.to_string().contains("wardnet-agent enroll"), "{e}");
    }
}

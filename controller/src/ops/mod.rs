//! What admins and agents ask of the controller: each operation checks
//! who asks and what is asked, and describes its change once, through the
//! pipeline's [`crate::pipeline::Tx`]; reads come from the published world.
//!
//! Scope: an admin token is network-wide or scoped to one organisation. A
//! scoped token sees and changes only its organisation's sites (and their
//! health, exports and audit entries); every other site answers 404, as if
//! it did not exist. What belongs to the whole network (regions, hubs,
//! organisations, admin tokens) only a network-wide token changes (403).

mod agents;
mod network;
mod rules;
mod sites;
mod views;

pub(crate) use agents::AgentIdentity;

use wardnet_common::Name;

use crate::error::Error;

/// Who asks: an admin token's id (what the audit log names) and the
/// organisation it is scoped to (`None`: network-wide).
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: String,
    pub org: Option<Name>,
}

impl Actor {
    /// The controller host's own commands (`admin-token create`).
    pub fn local() -> Self {
        Actor {
            id: "local".into(),
            org: None,
        }
    }

    /// Whether this admin may see and change what belongs to `org`.
    pub fn sees(&self, org: &Name) -> bool {
        self.org.as_ref().is_none_or(|o| o == org)
    }

    /// Refuses what only a network-wide token may do (`what`: "creating a
    /// region"). Nothing of another organisation is revealed by it.
    pub fn require_network_wide(&self, what: &str) -> Result<(), Error> {
        match &self.org {
            None => Ok(()),
            Some(org) => Err(Error::Forbidden(format!(
                "{what} needs a network-wide admin token; this token is scoped to organisation {org}"
            ))),
        }
    }
}

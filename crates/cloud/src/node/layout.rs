//! Names in a CVM's folder that more than one part of the node uses: the
//! guest agent's sockets (`agent`, handed to the CVM's machine by
//! `sandbox`). A leaf: it uses no sibling.

/// The folder of a CVM's agent sockets, in the CVM's folder.
pub const AGENT_DIR: &str = "agent";

/// The sockets a CVM's containers may mount (both serve every route).
pub const AGENT_SOCKETS: &[&str] = &["dstack.sock", "tappd.sock"];

//! [`Isolation`]: the boundary a CVM runs in, which decides the compose
//! rules it is held to. `sys-config.json` carries it ([`crate::app`]) and
//! the compose policy reads it ([`crate::policy`]); it lives apart so that
//! neither of those uses the other for it.

/// The isolation boundary a CVM runs in.
///
/// - `shared`: the CVM's containers run on the node's one engine, next to
///   every other CVM's; the compose policy refuses whatever would be root on
///   the host (the fast mode, no isolation between CVMs).
/// - `container`: the CVM is a system container of its own (own user,
///   mount, network, PID, IPC, UTS and cgroup namespaces, its own engine
///   inside); the compose rules are dstack's, since privileges, host paths
///   and the engine's socket mean the CVM's own machine.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// One engine shared by every CVM of the node.
    #[default]
    Shared,
    /// A system container per CVM, with its own engine inside.
    Container,
}

impl Isolation {
    /// The lowercase name, as in `sys-config.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Shared => "shared",
            Isolation::Container => "container",
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

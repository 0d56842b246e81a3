//! mesh's chained CNI plugin and the protocol it speaks with the node
//! agent. The runtime runs the plugin after the plugin that sets up the
//! pod's network; it tells the node agent the pod's netns and addresses and
//! succeeds only once the agent has enrolled the pod (or said it is not in
//! the mesh), so no packet reaches the pod's app before the mesh holds it.
//!
//! `install` puts the plugin on a node (`mesh-cni install`): the binary
//! into the runtime's plugin dir, its entry into the network config that
//! `conflist` edits.
//!
//! `protocol` is shared with the agent (`mesh_agent::cni`); this crate uses
//! nothing else of the workspace.
pub mod conflist;
pub mod install;
pub mod plugin;
pub mod protocol;

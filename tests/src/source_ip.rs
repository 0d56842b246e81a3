//! Which source address the agents deliver inbound connections from
//! (`datapath.sourceIp`), for beds that compare the two.
use mesh_config::SourceIp;

use crate::ClusterSpec;

impl ClusterSpec {
    /// Agents deliver every inbound connection from 127.0.0.6
    /// (`datapath.sourceIp: loopback`) instead of the client's address.
    pub fn loopback_delivery(self) -> Self {
        self.configure(|a| a.datapath.source_ip = SourceIp::Loopback)
    }
}

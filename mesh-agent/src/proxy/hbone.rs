//! The HBONE listener (15008). The port is the tunnel's entry in every
//! enrolled pod; until this build terminates mTLS tunnels, a connection to it
//! is refused with a reset, so no peer mistakes it for a working tunnel.
use std::sync::Arc;

use tokio::net::TcpListener;
use tracing::warn;

use super::relay;
use crate::pod::PodContext;

pub async fn serve(listener: TcpListener, pod: Arc<PodContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                warn!(pod = %pod.key, src = %peer, "HBONE connection refused: this agent does not terminate mTLS tunnels yet");
                relay::reset(stream);
            }
            Err(e) => warn!(pod = %pod.key, error = %e, "HBONE accept failed"),
        }
    }
}

//! What the unit tests of streams share: the client's end of a CONNECT
//! over an in-memory pipe.
use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::io::DuplexStream;

/// Opens an HTTP/2 connection over `io` with `window` as both windows,
/// sends CONNECT and waits for the answer: the stream's two halves.
pub(crate) async fn connect(io: DuplexStream, window: u32) -> (SendStream<Bytes>, RecvStream) {
    let (sender, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(window)
        .handshake::<_, Bytes>(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("10.0.0.1:80")
        .body(())
        .unwrap();
    let (response, send) = sender
        .ready()
        .await
        .unwrap()
        .send_request(request, false)
        .unwrap();
    (send, response.await.unwrap().into_body())
}

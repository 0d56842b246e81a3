//! `serve --mode web`: the HTTP server behind a waypoint. HTTP/1.1 and h2c
//! (prior knowledge) on the same port; every response names the server
//! (`x-served-by`, and a JSON body); a gRPC-shaped request (content-type
//! application/grpc) gets its message back with `grpc-status` in the
//! trailers; a WebSocket upgrade is answered and its frames echoed. One
//! JSON line per request on stdout, so a test can tell what reached it,
//! except for `/bytes/<n>`: <n> bytes of body for load generators (see
//! [`sized_response`]).
use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, Limited, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::websocket;

/// The response header naming the server that answered.
pub const SERVED_BY: &str = "x-served-by";
/// Request bodies larger than this are refused (413).
const MAX_BODY: usize = 1 << 20;
/// A client that sends no complete head within this is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// An upgraded connection idle for this long is closed.
const WEBSOCKET_IDLE: Duration = Duration::from_secs(30);

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves every listener until the process is killed.
pub fn serve(listeners: Vec<std::net::TcpListener>, name: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let name: Arc<str> = name.into();
    rt.block_on(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for l in listeners {
            l.set_nonblocking(true).expect("non-blocking listener");
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            let name = name.clone();
            tasks.spawn(async move {
                while let Ok((stream, _)) = l.accept().await {
                    tokio::spawn(connection(stream, name.clone()));
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}

async fn connection(stream: tokio::net::TcpStream, name: Arc<str>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| respond(request, name.clone()));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

fn body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

fn reply(status: StatusCode, name: &str, content_type: &str, b: Body) -> Response<Body> {
    let mut r = Response::new(b);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("a content type"),
    );
    if let Ok(v) = HeaderValue::from_str(name) {
        r.headers_mut().insert(SERVED_BY, v);
    }
    r
}

fn is_websocket(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

async fn respond(
    mut request: Request<Incoming>,
    name: Arc<str>,
) -> Result<Response<Body>, Infallible> {
    let path = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.to_string());
    let authority = request
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
    let version = format!("{:?}", request.version());
    let method = request.method().to_string();
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let websocket = is_websocket(request.headers());
    if let Some(len) = sized_response(&path) {
        return Ok(sized(request, len, &name).await);
    }
    println!(
        "{}",
        json!({"request": path, "method": method, "version": version,
               "authority": authority, "grpc": grpc, "websocket": websocket})
    );
    if websocket {
        return Ok(upgrade(&mut request, &name));
    }
    let received = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let text = format!("request body: {e}\n");
            return Ok(reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &name,
                "text/plain",
                body(text),
            ));
        }
    };
    if grpc {
        return Ok(grpc_reply(&received, &name));
    }
    let text = json!({
        "server": &*name, "version": version, "method": method, "path": path,
        "authority": authority, "body_bytes": received.len(),
    })
    .to_string();
    Ok(reply(StatusCode::OK, &name, "application/json", body(text)))
}

/// The body length a `/bytes/<n>` request asks for (at most [`MAX_BODY`]),
/// or None for any other path. Such requests are the benchmark's: sent by
/// the ten thousand a second, they are not logged, since a line each would
/// cost the server (and whoever keeps its output) more than the answer.
fn sized_response(path: &str) -> Option<usize> {
    let n: usize = path.strip_prefix("/bytes/")?.parse().ok()?;
    (n <= MAX_BODY).then_some(n)
}

/// `len` bytes of body, once the request's body (bounded) has been read.
async fn sized(request: Request<Incoming>, len: usize, name: &str) -> Response<Body> {
    if let Err(e) = Limited::new(request.into_body(), MAX_BODY).collect().await {
        let text = format!("request body: {e}\n");
        return reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            name,
            "text/plain",
            body(text),
        );
    }
    reply(
        StatusCode::OK,
        name,
        "application/octet-stream",
        body(vec![b'x'; len]),
    )
}

/// A gRPC unary answer: the request's one message back, and `grpc-status`
/// 0 in the trailers; 3 (INVALID_ARGUMENT) when the body is not exactly
/// one length-prefixed message.
fn grpc_reply(received: &[u8], name: &str) -> Response<Body> {
    let one_message = received.len() >= 5
        && received[0] == 0
        && u32::from_be_bytes([received[1], received[2], received[3], received[4]]) as usize
            == received.len() - 5;
    let mut trailers = HeaderMap::new();
    let (status, message) = if one_message {
        ("0", Bytes::copy_from_slice(received))
    } else {
        ("3", Bytes::new())
    };
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    let b = Full::new(message)
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed_unsync();
    reply(StatusCode::OK, name, "application/grpc", b)
}

/// 101 with the accept key, then the upgraded connection echoes frames.
fn upgrade(request: &mut Request<Incoming>, name: &str) -> Response<Body> {
    let Some(key) = request
        .headers()
        .get("sec-websocket-key")
        .and_then(|k| k.to_str().ok())
    else {
        return reply(
            StatusCode::BAD_REQUEST,
            name,
            "text/plain",
            body("Sec-WebSocket-Key missing\n"),
        );
    };
    let accept = websocket::accept_key(key);
    let upgraded = hyper::upgrade::on(request);
    tokio::spawn(async move {
        if let Ok(up) = upgraded.await {
            let _ = echo_frames(TokioIo::new(up)).await;
        }
    });
    let mut r = reply(
        StatusCode::SWITCHING_PROTOCOLS,
        name,
        "text/plain",
        Empty::new().boxed_unsync(),
    );
    let h = r.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    r
}

/// Echoes each frame unmasked until a close frame (answered) or idleness.
async fn echo_frames(mut io: impl AsyncRead + AsyncWrite + Unpin) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match websocket::decode(&buf).map_err(std::io::Error::other)? {
            Some((frame, used)) => {
                let _ = buf.split_to(used);
                io.write_all(&websocket::encode(frame.opcode, &frame.payload, None))
                    .await?;
                if frame.opcode == websocket::CLOSE {
                    return io.shutdown().await;
                }
            }
            None => {
                let n = tokio::time::timeout(WEBSOCKET_IDLE, io.read_buf(&mut buf))
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                if n == 0 {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bytes_paths_within_the_body_limit_ask_for_a_sized_response() {
        assert_eq!(sized_response("/bytes/1024"), Some(1024));
        assert_eq!(sized_response("/bytes/0"), Some(0));
        assert_eq!(
            sized_response(&format!("/bytes/{MAX_BODY}")),
            Some(MAX_BODY)
        );
        for other in [
            "/",
            "/bytes/",
            "/bytes/-1",
            "/bytes/1k",
            "/bytes/1024?x=1",
            "/x/bytes/1024",
            &format!("/bytes/{}", MAX_BODY + 1),
        ] {
            assert_eq!(sized_response(other), None, "{other}");
        }
    }
}

//! Clients for the waypoint's tests, each over exactly one TCP connection:
//! HTTP/1.1 keep-alive requests, h2c (prior knowledge) requests and a
//! gRPC-shaped call, a WebSocket exchange, and raw bytes. Each reports one
//! JSON object: what answered, per request.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{web::SERVED_BY, websocket};

/// A response body larger than this is an error: the server's are small.
const MAX_RESPONSE: usize = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `f` within `timeout`; a timeout or an error becomes `{"error": ..}`.
fn bounded<F>(timeout: Duration, f: F) -> Value
where
    F: std::future::Future<Output = Result<Value, String>>,
{
    runtime().block_on(async move {
        match tokio::time::timeout(timeout, f).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => json!({"error": e}),
            Err(_) => json!({"error": format!("timed out after {timeout:?}")}),
        }
    })
}

async fn connect(to: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect(to)
        .await
        .map_err(|e| format!("connecting to {to}: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// What one response said: its status, the server that answered (header)
/// and the server's JSON body.
async fn read_response(response: Response<Incoming>) -> Result<Value, String> {
    let status = response.status().as_u16();
    let served_by = response
        .headers()
        .get(SERVED_BY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?
        .to_bytes();
    let parsed: Value =
        serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body)));
    Ok(json!({"status": status, "served_by": served_by, "body": parsed}))
}

/// Tallies of what answered, over a run of requests.
#[derive(Default)]
struct Tally {
    servers: BTreeMap<String, u64>,
    statuses: BTreeMap<String, u64>,
    versions: BTreeMap<String, u64>,
    done: u64,
}

impl Tally {
    fn add(&mut self, r: &Value) {
        self.done += 1;
        *self.statuses.entry(r["status"].to_string()).or_default() += 1;
        // The server's own word (its body) over the header, which a
        // proxy could have copied.
        let server = r["body"]["server"]
            .as_str()
            .or(r["served_by"].as_str())
            .unwrap_or("-");
        *self.servers.entry(server.to_owned()).or_default() += 1;
        if let Some(v) = r["body"]["version"].as_str() {
            *self.versions.entry(v.to_owned()).or_default() += 1;
        }
    }

    fn report(self, local: Option<SocketAddr>, error: Option<String>) -> Value {
        json!({
            "requests": self.done, "servers": self.servers, "statuses": self.statuses,
            "server_versions": self.versions, "connections": 1,
            "local": local.map(|a| a.to_string()), "error": error,
        })
    }
}

/// `requests` GETs, one after another, over one HTTP/1.1 keep-alive
/// connection: a closed connection ends the run with an error instead of
/// a new connection.
pub fn http1(to: SocketAddr, authority: &str, requests: u32, timeout: Duration) -> Value {
    bounded(timeout, async move {
        let stream = connect(to).await?;
        let local = stream.local_addr().ok();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        let mut tally = Tally::default();
        for i in 0..requests {
            let request = Request::get(format!("/r/{i}"))
                .header(header::HOST, authority)
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let result = match send.send_request(request).await {
                Ok(r) => read_response(r).await,
                Err(e) => Err(format!("request {i}: {e}")),
            };
            match result {
                Ok(r) => tally.add(&r),
                Err(e) => return Ok(tally.report(local, Some(e))),
            }
        }
        Ok(tally.report(local, None))
    })
}

/// `requests` GETs at once over one h2c connection (prior knowledge), then,
/// with `grpc`, one gRPC-shaped unary call on the same connection.
pub fn h2c(
    to: SocketAddr,
    authority: &str,
    requests: u32,
    grpc: Option<&str>,
    timeout: Duration,
) -> Value {
    let authority = authority.to_owned();
    let grpc = grpc.map(str::to_owned);
    bounded(timeout, async move {
        let stream = connect(to).await?;
        let local = stream.local_addr().ok();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("h2c handshake: {e}"))?;
        tokio::spawn(conn);
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..requests {
            let mut send = send.clone();
            let uri = format!("http://{authority}/r/{i}");
            calls.spawn(async move {
                let request = Request::get(uri)
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| e.to_string())?;
                match send.send_request(request).await {
                    Ok(r) => read_response(r).await,
                    Err(e) => Err(format!("request {i}: {e}")),
                }
            });
        }
        let mut tally = Tally::default();
        let mut error = None;
        while let Some(done) = calls.join_next().await {
            match done.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(r) => tally.add(&r),
                Err(e) => error = Some(e),
            }
        }
        let mut report = tally.report(local, error);
        if let Some(message) = grpc {
            report["grpc"] = match grpc_call(send, &authority, &message).await {
                Ok(v) => v,
                Err(e) => json!({"error": e}),
            };
        }
        Ok(report)
    })
}

/// One message, length-prefixed as gRPC frames it (uncompressed).
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(message.len() as u32).to_be_bytes());
    b.extend_from_slice(message);
    b.freeze()
}

async fn grpc_call(
    mut send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    authority: &str,
    message: &str,
) -> Result<Value, String> {
    let request = Request::post(format!("http://{authority}/mesh.test.Echo/Call"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(Full::new(grpc_frame(message.as_bytes())))
        .map_err(|e| e.to_string())?;
    let response = send
        .send_request(request)
        .await
        .map_err(|e| format!("gRPC call: {e}"))?;
    let status = response.status().as_u16();
    let header_text = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header_text("content-type");
    let served_by = header_text(SERVED_BY);
    let collected = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("gRPC response body: {e}"))?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = collected.to_bytes();
    let echoed = body
        .get(5..)
        .map(|m| String::from_utf8_lossy(m).into_owned());
    Ok(json!({
        "status": status, "content_type": content_type, "served_by": served_by,
        "grpc_status": grpc_status, "message": echoed, "trailers": grpc_status.is_some(),
    }))
}

/// Reads an HTTP/1.1 response head; what follows it stays in `buf`.
async fn read_head(
    s: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<(u16, Vec<(String, String)>), String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            let text = String::from_utf8_lossy(&head);
            let mut lines = text.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("bad status line in {text:?}"))?;
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            return Ok((status, headers));
        }
        if buf.len() > 64 * 1024 {
            return Err("response head over 64 KiB".into());
        }
        let n = s
            .read_buf(buf)
            .await
            .map_err(|e| format!("reading the head: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before a complete head; got {:?}",
                String::from_utf8_lossy(buf)
            ));
        }
    }
}

/// An HTTP/1.1 Upgrade to WebSocket, one text message echoed, a close.
pub fn websocket(to: SocketAddr, authority: &str, message: &str, timeout: Duration) -> Value {
    let authority = authority.to_owned();
    let message = message.to_owned();
    bounded(timeout, async move {
        let mut s = connect(to).await?;
        let key_bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
        let key = websocket::base64(&key_bytes);
        let request = format!(
            "GET /chat HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(4096);
        let (status, headers) = read_head(&mut s, &mut buf).await?;
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let accept_ok = get("sec-websocket-accept") == Some(websocket::accept_key(&key));
        let mut report = json!({
            "status": status, "accept_ok": accept_ok, "served_by": get(SERVED_BY),
            "upgrade": get("upgrade"),
        });
        if status != 101 {
            return Ok(report);
        }
        let mask: [u8; 4] = std::array::from_fn(|_| fastrand::u8(..));
        s.write_all(&websocket::encode(
            websocket::TEXT,
            message.as_bytes(),
            Some(mask),
        ))
        .await
        .map_err(|e| e.to_string())?;
        let frame = loop {
            if let Some((frame, used)) = websocket::decode(&buf)? {
                let _ = buf.split_to(used);
                break frame;
            }
            let n = s.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed before the echo".into());
            }
        };
        report["echo"] = json!(String::from_utf8_lossy(&frame.payload));
        report["echo_masked"] = json!(frame.masked);
        let _ = s
            .write_all(&websocket::encode(websocket::CLOSE, &[], Some(mask)))
            .await;
        Ok(report)
    })
}

/// Writes `data` as is, reads until the peer closes (or `timeout`), and
/// reports the status code if the reply is HTTP.
pub fn raw(to: SocketAddr, data: &str, timeout: Duration) -> Value {
    let data = data.to_owned();
    runtime().block_on(async move {
        let mut s = match connect(to).await {
            Ok(s) => s,
            Err(e) => return json!({"error": e}),
        };
        if let Err(e) = s.write_all(data.as_bytes()).await {
            return json!({"error": format!("writing: {e}")});
        }
        let mut got = Vec::new();
        let read = tokio::time::timeout(timeout, async {
            let mut chunk = [0u8; 4096];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) => return Ok(()),
                    Ok(n) if got.len() < 64 * 1024 => got.extend_from_slice(&chunk[..n]),
                    Ok(_) => return Ok(()),
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await;
        let text = String::from_utf8_lossy(&got).into_owned();
        let status = text
            .strip_prefix("HTTP/1.")
            .and_then(|t| t.get(2..5))
            .and_then(|c| c.parse::<u16>().ok());
        json!({
            "status": status, "response": text,
            "closed": matches!(read, Ok(Ok(()))),
            "error": match read { Ok(Err(e)) => Some(e), _ => None },
        })
    })
}

/// A `Host` value for `to` when the caller names none.
pub fn default_authority(to: SocketAddr, authority: Option<String>) -> String {
    authority.unwrap_or_else(|| to.to_string())
}

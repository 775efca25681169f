//! A small HTTP/1.1 client (hyper) over one kept-alive connection, for the lookup API tests
//! and the load benchmark (`benches/serve.rs` includes this file).

#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// The address a `tagflow serve` child prints on its first stdout line.
pub fn listening_address(child: &mut std::process::Child) -> SocketAddr {
    listening_addresses(child, &["http"])[0]
}

/// The addresses a `tagflow serve` child prints on its first lines, one per scheme in
/// order (`http`, then `postgres` when it was given `--pg-listen`).
pub fn listening_addresses(child: &mut std::process::Child, schemes: &[&str]) -> Vec<SocketAddr> {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    schemes
        .iter()
        .map(|scheme| {
            let line = lines.next().expect("a line").expect("read stdout");
            line.trim()
                .strip_prefix(&format!("listening on {scheme}://"))
                .unwrap_or_else(|| panic!("unexpected line: {line:?}"))
                .parse()
                .expect("an address")
        })
        .collect()
}

pub struct Client {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
    token: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error.code` of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Client {
            addr,
            sender: None,
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    async fn connection(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, hyper::Error> {
        let usable = match &mut self.sender {
            Some(sender) => sender.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            let stream = tokio::net::TcpStream::connect(self.addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("connected"))
    }

    /// Send one request; connection errors are returned, not panicked on.
    pub async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Reply, hyper::Error> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string());
        if let Some(content_type) = content_type {
            request = request.header(hyper::header::CONTENT_TYPE, content_type);
        }
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::from(body))).expect("request");
        let response = self.connection().await?.send_request(request).await?;
        let (parts, body) = response.into_parts();
        Ok(Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await?.to_bytes(),
        })
    }

    pub async fn send(&mut self, method: &str, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        self.try_send(method, path, content_type, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, None, Vec::new()).await
    }

    pub async fn post(&mut self, path: &str, body: &serde_json::Value) -> Reply {
        self.send("POST", path, Some("application/json"), body.to_string().into_bytes())
            .await
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// A Server-Sent Events response read as it arrives.
pub struct Events {
    pub status: u16,
    body: hyper::body::Incoming,
    buffer: String,
    _sender: SendRequest<Full<Bytes>>,
}

impl Events {
    /// `GET path` with `Accept: text/event-stream` (and `Last-Event-ID` when resuming).
    pub async fn open(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Events {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::new())).expect("request"))
            .await
            .expect("response");
        let status = response.status().as_u16();
        Events {
            status,
            body: response.into_body(),
            buffer: String::new(),
            _sender: sender,
        }
    }

    /// The next event (comments and keep-alives skipped); None when the stream ended.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim_start().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = Some(v.trim_start().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if event.event.is_some() || !event.data.is_empty() {
                    return Some(event);
                }
                continue;
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}

//! A WebSocket test client over a real socket (tokio-tungstenite).
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A connected client.
pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hello: Value,
}

/// How a connection ended, from the client's side.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(Option<u16>),
    Timeout,
}

impl WsClient {
    /// Connect with a Bearer header (and optional Origin); read `hello`.
    pub async fn connect(base: &str, token: &str) -> WsClient {
        Self::connect_with(base, Some(token), None, false)
            .await
            .unwrap()
    }

    /// Connect with options; the handshake's HTTP status on refusal.
    pub async fn connect_with(
        base: &str,
        token: Option<&str>,
        origin: Option<&str>,
        token_in_query: bool,
    ) -> Result<WsClient, u16> {
        let mut url = format!("{}/ws", base.replacen("http://", "ws://", 1));
        if let (true, Some(token)) = (token_in_query, token) {
            url.push_str(&format!("?access_token={token}"));
        }
        let mut request = url.into_client_request().unwrap();
        if let (false, Some(token)) = (token_in_query, token) {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => {
                let mut client = WsClient {
                    stream,
                    hello: Value::Null,
                };
                client.hello = client.next().await;
                assert_eq!(client.hello["type"], "hello", "{}", client.hello);
                Ok(client)
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Send a JSON frame.
    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::Text(frame.to_string()))
            .await
            .unwrap();
    }

    /// Send raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next JSON frame (10 s limit); panics on close.
    pub async fn next(&mut self) -> Value {
        match self.next_within(Duration::from_secs(10)).await {
            Some(v) => v,
            None => panic!("no frame within 10 s"),
        }
    }

    /// The next JSON frame, or `None` on timeout or close.
    pub async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            match message.ok()? {
                Message::Text(text) => return Some(serde_json::from_str(&text).unwrap()),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next frame of a type, skipping others (presence, ...).
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Subscribe; returns the `subscribed` frame (snapshot or backlog follows).
    pub async fn subscribe(&mut self, ticket_id: i64, since: Option<i64>) -> Value {
        let mut frame = serde_json::json!({"type": "subscribe", "ticket_id": ticket_id});
        if let Some(since) = since {
            frame["since"] = since.into();
        }
        self.send(frame).await;
        self.next_of("subscribed").await
    }

    /// Collect `event` frames of a ticket until `count` arrived (time-limited).
    pub async fn events(&mut self, ticket_id: i64, count: usize, limit: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut events = Vec::new();
        while events.len() < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(frame) if frame["type"] == "event" && frame["ticket_id"] == ticket_id => {
                    events.push(frame)
                }
                Some(_) => {}
                None => break,
            }
        }
        events
    }

    /// Read until the server closes; the close code.
    pub async fn closed(&mut self, limit: Duration) -> Ended {
        self.closed_after(limit).await.1
    }

    /// Read until the server closes: how many text frames came before the
    /// close, and the close code.
    pub async fn closed_after(&mut self, limit: Duration) -> (usize, Ended) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut frames = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return (frames, Ended::Timeout),
                Ok(None) => return (frames, Ended::Closed(None)),
                Ok(Some(Err(e))) => {
                    eprintln!("websocket error while waiting for the close: {e}");
                    return (frames, Ended::Closed(None));
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return (frames, Ended::Closed(frame.map(|f| u16::from(f.code))))
                }
                Ok(Some(Ok(Message::Text(_)))) => frames += 1,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// Assert versions are exactly `from..=to`, once each, in order.
pub fn assert_versions(events: &[Value], from: i64, to: i64) {
    let versions: Vec<i64> = events
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (from..=to).collect();
    if versions != expected {
        let first_bad = versions.iter().zip(&expected).position(|(a, b)| a != b);
        panic!(
            "versions must be {from}..={to} once, in order: got {} events, first {:?}, last {:?}, first mismatch at index {first_bad:?}",
            versions.len(),
            versions.first(),
            versions.last()
        );
    }
}

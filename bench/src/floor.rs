//! The fan-out floor: a bare broadcast server (tokio + tokio-tungstenite,
//! nothing else) that sends the same frame to every connected socket. It
//! speaks just enough of livedesk's protocol (`hello`, `subscribe` →
//! `subscribed`) for the bench's own clients to connect to it unchanged, so
//! the same clients on the same machine measure both, and livedesk's
//! one-change-to-1,000-watchers latency is judged against what the kernel
//! and a WebSocket library alone cost here.

use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// A running floor server on its own runtime (2 worker threads, like the
/// livedesk server on this machine), stopped on drop.
pub struct Floor {
    /// `http://127.0.0.1:port`, as for livedesk (the clients add `/ws`).
    pub base: String,
    frames: broadcast::Sender<String>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Floor {
    /// Start it; returns once it accepts connections.
    pub fn start() -> Result<Floor> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let base = format!("http://{}", listener.local_addr()?);
        let (frames, _) = broadcast::channel::<String>(1024);
        let (stop, stopped) = oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let sender = frames.clone();
        let thread = std::thread::Builder::new()
            .name("floor".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept(listener, sender) => {}
                    }
                });
                runtime.shutdown_background();
            })?;
        Ok(Floor {
            base,
            frames,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Send `frame` to every subscribed socket.
    pub fn broadcast(&self, frame: String) -> Result<()> {
        self.frames
            .send(frame)
            .map(|_| ())
            .map_err(|_| anyhow!("no socket is connected to the floor server"))
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: TcpListener, frames: broadcast::Sender<String>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let frames = frames.subscribe();
        tokio::spawn(async move {
            let _ = connection(stream, frames).await;
        });
    }
}

/// One socket: hello, answer subscribes, then every broadcast frame.
async fn connection(
    stream: tokio::net::TcpStream,
    mut frames: broadcast::Receiver<String>,
) -> Result<()> {
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    ws.send(Message::Text(r#"{"type": "hello"}"#.into()))
        .await?;
    let mut subscribed = false;
    loop {
        tokio::select! {
            inbound = ws.next() => match inbound {
                Some(Ok(Message::Text(text))) => {
                    let frame: serde_json::Value = serde_json::from_str(&text)?;
                    if frame["type"] == "subscribe" {
                        subscribed = true;
                        let answer = serde_json::json!({
                            "type": "subscribed",
                            "ticket_id": frame["ticket_id"],
                            "version": 0,
                        });
                        ws.send(Message::Text(answer.to_string())).await?;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
            frame = frames.recv() => match frame {
                Ok(frame) if subscribed => ws.send(Message::Text(frame)).await?,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

/// An event frame shaped and sized like livedesk's lean `ticket.updated`
/// (the `(ticket_id, version)` tail the clients read is the same).
pub fn event_frame(ticket: i64, version: i64) -> String {
    format!(
        r#"{{"type": "event", "at": "2026-12-02T03:00:00.000000Z", "data": {{"changes": {{"subject": {{"to": "change {version}", "from": "change {}"}}}}}}, "kind": "ticket.updated", "actor": null, "version": {version}, "ticket_id": {ticket}}}"#,
        version - 1
    )
}

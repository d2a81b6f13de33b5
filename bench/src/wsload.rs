//! The load generator's WebSocket side: many cheap clients on one runtime,
//! each recording when every event arrived and checking versions are gapless.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// What one client saw.
#[derive(Debug, Default)]
pub struct ClientLog {
    pub ticket: Option<i64>,
    pub start_version: i64,
    pub receipts: Vec<(i64, Instant)>,
    pub close_code: Option<u16>,
}

/// A set of running clients.
pub struct Clients {
    pub tasks: Vec<JoinHandle<ClientLog>>,
    pub stop: CancellationToken,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    ticket_id: Option<i64>,
    version: Option<i64>,
}

/// Open `n` clients; client i subscribes to `tickets[i % len]` (none if empty),
/// optionally `since`; returns once all are subscribed.
pub async fn open(
    base: &str,
    token: &str,
    tickets: &[i64],
    n: usize,
    since: Option<i64>,
) -> Result<Clients> {
    let stop = CancellationToken::new();
    let ready = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let url = format!("{}/ws", base.replacen("http://", "ws://", 1));
    let gate = Arc::new(tokio::sync::Semaphore::new(128));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let ticket = (!tickets.is_empty()).then(|| tickets[i % tickets.len()]);
        let (url, token, stop, ready, failed, gate) = (
            url.clone(),
            token.to_string(),
            stop.clone(),
            ready.clone(),
            failed.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            match client(&url, &token, ticket, since, &ready, stop, permit.ok()).await {
                Ok(log) => log,
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    ClientLog::default()
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            return Err(anyhow!(
                "only {} of {n} clients subscribed",
                ready.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failures = failed.load(Ordering::Relaxed);
    if failures > 0 {
        return Err(anyhow!("{failures} of {n} clients failed to connect"));
    }
    Ok(Clients { tasks, stop })
}

async fn client(
    url: &str,
    token: &str,
    ticket: Option<i64>,
    since: Option<i64>,
    ready: &AtomicUsize,
    stop: CancellationToken,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<ClientLog> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true).await?;
    let mut log = ClientLog {
        ticket,
        ..Default::default()
    };
    next_frame(&mut ws).await?; // hello
    if let Some(ticket) = ticket {
        let mut frame = serde_json::json!({"type": "subscribe", "ticket_id": ticket});
        if let Some(since) = since {
            frame["since"] = since.into();
        }
        ws.send(Message::Text(frame.to_string())).await?;
        loop {
            let frame = next_frame(&mut ws).await?;
            if frame.kind == "subscribed" {
                log.start_version = frame.version.unwrap_or(0);
                break;
            }
        }
    }
    drop(permit);
    ready.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            message = ws.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    let at = Instant::now();
                    if let Some((ticket_id, version)) = event_ids(&text) {
                        if Some(ticket_id) == ticket {
                            log.receipts.push((version, at));
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    log.close_code = frame.map(|f| u16::from(f.code));
                    break;
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    }
    Ok(log)
}

async fn next_frame<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Result<Frame>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text)?),
            Some(Ok(_)) => continue,
            other => return Err(anyhow!("connection ended: {other:?}")),
        }
    }
}

impl Clients {
    /// Stop every client and collect their logs.
    pub async fn finish(self) -> Vec<ClientLog> {
        self.stop.cancel();
        let mut logs = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            logs.push(task.await.unwrap_or_default());
        }
        logs
    }
}

/// Commit acknowledgments: (ticket, version) → when the writer saw the commit.
pub type Commits = HashMap<(i64, i64), Instant>;

/// Latency histogram (µs) of every receipt, and the number of correctness
/// faults (gaps, duplicates, missing events, disorder).
pub fn analyse(logs: &[ClientLog], commits: &Commits) -> (Histogram<u64>, u64, u64) {
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds");
    let mut faults = 0;
    let mut early = 0;
    let mut expected: HashMap<i64, Vec<i64>> = HashMap::new();
    for (ticket, version) in commits.keys() {
        expected.entry(*ticket).or_default().push(*version);
    }
    for versions in expected.values_mut() {
        versions.sort_unstable();
    }
    for log in logs {
        let Some(ticket) = log.ticket else { continue };
        let want: Vec<i64> = expected
            .get(&ticket)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|v| *v > log.start_version)
                    .collect()
            })
            .unwrap_or_default();
        let got: Vec<i64> = log.receipts.iter().map(|(v, _)| *v).collect();
        if got != want {
            faults += 1;
        }
        for (version, at) in &log.receipts {
            if let Some(committed) = commits.get(&(ticket, *version)) {
                let micros = at.saturating_duration_since(*committed).as_micros() as u64;
                if *at < *committed {
                    early += 1;
                }
                let _ = histogram.record(micros.max(1));
            }
        }
    }
    (histogram, faults, early)
}

/// `(ticket_id, version)` of an event frame, read from its tail without
/// parsing the whole document (the load generator must stay cheap: it shares
/// the cores with the server). Event frames end with
/// `"version": V, "ticket_id": T}` (jsonb orders keys by length); anything
/// else falls back to a full parse.
pub fn event_ids(text: &str) -> Option<(i64, i64)> {
    if !text.starts_with(r#"{"type": "event""#) {
        return None;
    }
    let tail = &text[text.len().saturating_sub(64)..];
    let number_after = |key: &str| -> Option<i64> {
        let start = tail.rfind(key)? + key.len();
        let digits: String = tail[start..]
            .chars()
            .skip_while(|c| *c == ' ')
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    match (
        number_after(r#""ticket_id":"#),
        number_after(r#""version":"#),
    ) {
        (Some(t), Some(v)) => Some((t, v)),
        _ => serde_json::from_str::<Frame>(text)
            .ok()
            .and_then(|f| Some((f.ticket_id?, f.version?))),
    }
}

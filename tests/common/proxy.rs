//! A TCP fault proxy for tests: livedesk connects to it over TCP, it
//! forwards to the test cluster's unix socket, and a test can make the
//! network misbehave: blackhole (stop forwarding both ways without closing:
//! a stuck proxy, a storage stall, a silent partition), add latency, cut
//! every connection with a TCP reset, and restore.
//!
//! A blackhole stalls bytes rather than dropping them, like TCP
//! retransmission would: when restored, connections that survived resume
//! where they were. `blackhole_existing` stalls only the connections open
//! now, forever: they died silently, new ones work.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;

/// What the proxy does with bytes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    /// Stall every connection (new ones too).
    blackhole: bool,
    /// Connections opened before this generation stall forever.
    dead_before: u64,
    /// Connections opened before this generation are reset.
    cut_before: u64,
    latency: Duration,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listen on a free loopback port and forward to a unix socket.
    pub async fn start(upstream: PathBuf) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, _) = watch::channel(Mode {
            blackhole: false,
            dead_before: 0,
            cut_before: 0,
            latency: Duration::ZERO,
        });
        let generation = Arc::new(AtomicU64::new(1));
        let accept_mode = mode.clone();
        let accept_generation = generation.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let born = accept_generation.load(Ordering::Acquire);
                let rx = accept_mode.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    // Even the connect waits while blackholed.
                    let mut gate = rx.clone();
                    if !wait_open(&mut gate, born).await {
                        reset(client);
                        return;
                    }
                    let Ok(server) = UnixStream::connect(&upstream).await else {
                        reset(client);
                        return;
                    };
                    serve(client, server, rx, born).await;
                });
            }
        });
        Proxy {
            port,
            mode,
            generation,
            task,
        }
    }

    /// The same user and database as `direct`, through the proxy.
    pub fn route(&self, direct: &tokio_postgres::Config) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(self.port);
        if let Some(user) = direct.get_user() {
            config.user(user);
        }
        if let Some(dbname) = direct.get_dbname() {
            config.dbname(dbname);
        }
        config
    }

    /// Stop forwarding in both directions (connections stay open).
    pub fn blackhole(&self) {
        self.mode.send_modify(|m| m.blackhole = true);
    }

    /// The connections open now stall forever; new ones work.
    pub fn blackhole_existing(&self) {
        let now = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.mode.send_modify(|m| m.dead_before = now);
    }

    /// Delay every chunk by `latency` in each direction.
    pub fn latency(&self, latency: Duration) {
        self.mode.send_modify(|m| m.latency = latency);
    }

    /// Reset (RST) every open connection.
    pub fn cut(&self) {
        let now = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.mode.send_modify(|m| m.cut_before = now);
    }

    /// Forward again, without latency (connections killed stay killed).
    pub fn restore(&self) {
        self.mode.send_modify(|m| {
            m.blackhole = false;
            m.latency = Duration::ZERO;
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// Wait until bytes may flow for a connection born in generation `born`;
/// false when it must be reset.
async fn wait_open(rx: &mut watch::Receiver<Mode>, born: u64) -> bool {
    loop {
        let mode = *rx.borrow_and_update();
        if born < mode.cut_before {
            return false;
        }
        if !mode.blackhole && born >= mode.dead_before {
            return true;
        }
        if rx.changed().await.is_err() {
            return false;
        }
    }
}

/// Close with a TCP reset rather than a FIN (SO_LINGER 0: the close does
/// not block, which is why tokio deprecates the general setter).
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// How a direction ended.
enum End {
    /// A side closed or failed: close the other normally.
    Closed,
    /// The test cut the connection: reset it.
    Cut,
}

async fn serve(client: TcpStream, server: UnixStream, rx: watch::Receiver<Mode>, born: u64) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let end = {
        let up = pump(&mut client_read, &mut server_write, rx.clone(), born);
        let down = pump(&mut server_read, &mut client_write, rx, born);
        // When either direction ends, both go.
        tokio::select! {
            end = up => end,
            end = down => end,
        }
    };
    if let End::Cut = end {
        #[allow(deprecated)]
        let _ = client_write.as_ref().set_linger(Some(Duration::ZERO));
    }
}

/// Copy one direction, honouring the mode before each chunk.
async fn pump<R, W>(from: &mut R, to: &mut W, mut rx: watch::Receiver<Mode>, born: u64) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !wait_open(&mut rx, born).await {
            return End::Cut;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => n,
            },
            // A cut or a blackhole while waiting for bytes: re-check.
            changed = rx.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return End::Cut,
            },
        };
        // Bytes read just before a blackhole are held until it lifts.
        if !wait_open(&mut rx, born).await {
            return End::Cut;
        }
        let latency = rx.borrow().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return End::Closed;
        }
    }
}

//! What every personality's connections share: the personality's shape, the server's
//! handles, accepting (plain or TLS), driving one connection over its handler, serving REST.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::market::Intervals;
use super::state::{Hostile, SimConfig, State, TAP_CAPACITY, TapRx, Update, lock};

/// A venue the simulator speaks: its servers and what its markets look like.
pub struct Personality {
    /// The `venue.kind` it speaks.
    pub venue: &'static str,
    /// Interval names with the lengths bars are built on.
    pub intervals: Intervals,
    /// What `mdrec demo` records from it besides trades and tickers (`[record]` lines).
    pub demo_record: &'static str,
    /// The symbols `mdrec demo` and `mdrec simulate` use by default.
    pub demo_symbols: &'static [&'static str],
    /// Book levels per side.
    pub book_levels: usize,
    /// Trade ids grow by random steps (numbered across markets), not by one.
    pub id_jumps: bool,
    /// Path of the websocket URL and the REST root.
    pub ws_path: &'static str,
    pub rest_path: &'static str,
    /// Serves the websocket and REST APIs on the listeners, as tasks of the simulator.
    pub serve: fn(Server, tokio::net::TcpListener, tokio::net::TcpListener),
}

/// What every personality's server shares with the market and the handle.
pub struct Server {
    pub config: SimConfig,
    pub personality: &'static Personality,
    pub state: Arc<Mutex<State>>,
    /// Bumped to cut every open connection (fault injection).
    pub kick: watch::Sender<u64>,
    /// Hostile frames to send to every connection (fault injection).
    pub hostile: broadcast::Sender<Hostile>,
    /// True: connections send nothing but stay open (fault injection).
    pub muted: watch::Sender<bool>,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
    /// Trade history requests answered so far (for the 429 switch).
    pub trade_requests: std::sync::atomic::AtomicU32,
    /// Websocket frames written to clients (a load generator's output).
    pub frames_sent: Arc<std::sync::atomic::AtomicU64>,
}

/// What one simulated connection of a personality answers; [`drive`] runs what every
/// connection shares (shutdown, cuts, hostile frames, the mute switch, market steps, the
/// client's close).
pub(crate) trait Handler: Send {
    /// When the personality's own timer (pings, heartbeats, quiet books) fires next.
    fn next_timer(&self) -> Option<tokio::time::Instant>;
    /// That timer fired; `muted`: the server sends nothing now.
    fn on_timer(&mut self, muted: bool) -> anyhow::Result<Reply>;
    /// A text frame from the client.
    fn on_text(&mut self, text: &str) -> anyhow::Result<Vec<Message>>;
    /// One market step: the frames to send, each with the trade ids it delivers.
    fn on_update(&mut self, u: &Update) -> anyhow::Result<Vec<(Message, Vec<i64>)>>;
    fn hostile_frame(&self, h: Hostile) -> anyhow::Result<Message>;
    /// Channels the connection holds (released from the count when it ends).
    fn subscriptions(&self) -> usize;
}

/// What a handler's timer asks for.
pub(crate) enum Reply {
    Send(Vec<Message>),
    /// Send this frame, then end the connection.
    Close(Message),
}

/// A connection's bytes: plain TCP, or TLS over it when the simulator serves TLS.
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
pub(crate) type Socket = Box<dyn Io>;

/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(5);

/// Accepts websocket connections until the simulator stops, each run by `connection` in a
/// task of its own (after its TLS handshake when the simulator serves TLS).
pub(crate) async fn accept<F, Fut>(
    server: &Server,
    listener: tokio::net::TcpListener,
    connection: F,
) where
    F: Fn(Socket) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let tls = server
        .config
        .tls
        .clone()
        .map(tokio_rustls::TlsAcceptor::from);
    let connection = Arc::new(connection);
    loop {
        let accepted = tokio::select! {
            _ = server.cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                let (tls, connection) = (tls.clone(), connection.clone());
                server.tasks.spawn(async move {
                    let socket: Socket = match tls {
                        None => Box::new(tcp),
                        Some(tls) => {
                            match tokio::time::timeout(TLS_HANDSHAKE, tls.accept(tcp)).await {
                                Ok(Ok(s)) => Box::new(s),
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "simulator TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            }
                        }
                    };
                    if let Err(e) = connection(socket).await {
                        tracing::debug!(error = %e, "simulator connection ended");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "simulator accept failed"),
        }
    }
}

/// TCP with a TLS handshake per accepted connection, for the REST server.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                // out of descriptors or the like: do not spin on it
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // a client that fails its handshake is its own problem; the next one is served
            if let Ok(Ok(s)) = tokio::time::timeout(TLS_HANDSHAKE, self.tls.accept(tcp)).await {
                return (s, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Serves a personality's REST routes until the simulator stops (over TLS when it serves TLS).
pub(crate) async fn serve_http(
    server: &Server,
    listener: tokio::net::TcpListener,
    app: axum::Router,
) {
    let cancel = server.cancel.clone();
    let stop = async move { cancel.cancelled().await };
    let r = match server.config.tls.clone() {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(tls) => {
            let listener = TlsListener {
                tcp: listener,
                tls: tokio_rustls::TlsAcceptor::from(tls),
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "simulator REST server stopped");
    }
}

/// Runs one accepted connection with its personality's handler until either side ends it.
pub(crate) async fn drive<S>(
    server: &Server,
    mut ws: S,
    h: &mut dyn Handler,
    mut steps: TapRx,
) -> anyhow::Result<()>
where
    S: futures_util::Sink<Message, Error = tokio_tungstenite::tungstenite::Error>
        + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    let mut kick = server.kick.subscribe();
    let mut hostile = server.hostile.subscribe();
    let result: anyhow::Result<()> = async {
        loop {
            let timer = h.next_timer();
            tokio::select! {
                _ = server.cancel.cancelled() => {
                    let _ = ws.close().await;
                    return Ok(());
                }
                _ = kick.changed() => anyhow::bail!("connection cut by fault injection"),
                _ = steps.slow.cancelled() => anyhow::bail!("client too slow, {TAP_CAPACITY} steps behind"),
                m = hostile.recv() => {
                    if let Ok(m) = m {
                        ws.send(h.hostile_frame(m)?).await?;
                        if m == Hostile::CloseWithNul {
                            let _ = ws.flush().await;
                            return Ok(());
                        }
                    }
                }
                _ = tokio::time::sleep_until(timer.unwrap_or_else(tokio::time::Instant::now)), if timer.is_some() => {
                    let muted = *server.muted.borrow();
                    match h.on_timer(muted)? {
                        Reply::Send(frames) => {
                            for f in frames {
                                ws.send(f).await?;
                            }
                        }
                        Reply::Close(f) => {
                            ws.send(f).await?;
                            let _ = ws.flush().await;
                            return Ok(());
                        }
                    }
                }
                msg = ws.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    match msg? {
                        Message::Text(t) => {
                            for f in h.on_text(&t)? {
                                ws.send(f).await?;
                            }
                        }
                        Message::Close(_) => {
                            // tungstenite queues the close reply; flush it and stop sending
                            let _ = ws.flush().await;
                            return Ok(());
                        }
                        _ => {}
                    }
                }
                u = steps.rx.recv() => {
                    let Some(u) = u else { return Ok(()) };
                    if *server.muted.borrow() {
                        continue;
                    }
                    for (frame, trade_ids) in h.on_update(&u)? {
                        ws.feed(frame).await?;
                        server.frames_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if !trade_ids.is_empty() {
                            lock(&server.state).delivered.entry(u.symbol.to_string()).or_default().extend(trade_ids);
                        }
                    }
                    // one write for the step's frames
                    ws.flush().await?;
                }
            }
        }
    }
    .await;
    let mut st = lock(&server.state);
    st.subscriptions -= h.subscriptions();
    for taps in st.taps.values_mut() {
        taps.retain(|t| t.id != steps.id);
    }
    result
}

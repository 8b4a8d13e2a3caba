//! `tokio-hub`: the baseline WebSocket pub/sub server for wsgate benchmarks.
//!
//! It speaks wire protocol v1 (`shared/protocol-v1.md`) with the mainstream Rust stack: a tokio
//! multi-thread runtime, tokio-tungstenite for the WebSocket layer, tokio-rustls for TLS, and a single
//! `RwLock<HashMap<topic, HashMap<session, mpsc::Sender>>>` hub shared by every session. Each pub/sub
//! session is a reader task (parses requests, publishes) plus a writer task that drains a bounded
//! `tokio::sync::mpsc` channel into the socket. See README.md for why this is the baseline.

mod hub;
mod listener;
mod protocol;
mod session;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Command line of the baseline server.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "tokio-hub",
    version,
    about = "Baseline tokio + tungstenite pub/sub server (protocol v1)"
)]
pub struct Args {
    /// Plain WebSocket listen address, or `off`.
    #[arg(long, default_value = "127.0.0.1:9080")]
    pub ws: String,
    /// TLS WebSocket listen address, or `off`.
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub wss: String,
    /// PEM certificate chain for wss (a self-signed one is generated when omitted).
    #[arg(long, requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// PEM private key for wss.
    #[arg(long, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Largest accepted WebSocket message (and frame), in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_message: usize,
    /// Per-session outbound channel capacity in frames; a full channel marks a slow consumer.
    #[arg(long, default_value_t = 4096)]
    pub queue: usize,
}

/// Parse `ADDR|off`.
fn parse_addr(flag: &str, value: &str) -> Result<Option<SocketAddr>, String> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e| format!("--{flag} {value:?}: {e}"))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio-hub: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let ws = parse_addr("ws", &args.ws)?;
    let wss = parse_addr("wss", &args.wss)?;
    if ws.is_none() && wss.is_none() {
        return Err("both --ws and --wss are off; nothing to serve".into());
    }
    if args.queue == 0 {
        return Err("--queue must be at least 1".into());
    }
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let tls = match wss {
        Some(_) => Some(tls::acceptor(args.cert.as_deref(), args.key.as_deref())?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let ctx = Arc::new(listener::Context::new(&args));
    runtime.block_on(async move {
        let mut tasks = Vec::new();
        if let Some(addr) = ws {
            let l = listener::bind(addr).await?;
            eprintln!("tokio-hub: ws://{} ({threads} threads)", local(&l, addr));
            tasks.push(tokio::spawn(listener::serve(l, None, ctx.clone())));
        }
        if let (Some(addr), Some(tls)) = (wss, tls) {
            let l = listener::bind(addr).await?;
            eprintln!("tokio-hub: wss://{} ({threads} threads)", local(&l, addr));
            tasks.push(tokio::spawn(listener::serve(l, Some(tls), ctx.clone())));
        }
        for t in tasks {
            if let Err(e) = t.await {
                return Err(format!("listener task failed: {e}"));
            }
        }
        Ok(())
    })
}

fn local(l: &tokio::net::TcpListener, fallback: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(fallback)
}

//! `wsgate`: the command-line front of the library. Parses flags, merges them over the config file,
//! starts the gateway and stops it gracefully on SIGINT/SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wsgate::{Config, DriverChoice, Gateway, Overrides};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits whole arenas up front by default, which costs idle sessions ~0.4 KiB of RSS each
/// (docs/benchmarks.md). The option must be set before the first allocation, and Rust's runtime
/// allocates before `main`, so it is set from an ELF constructor; `MIMALLOC_ARENA_EAGER_COMMIT` in the
/// environment still wins.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static MIMALLOC_DEFAULTS: extern "C" fn() = mimalloc_defaults;

#[cfg(target_os = "linux")]
extern "C" fn mimalloc_defaults() {
    /// `mi_option_arena_eager_commit` in mimalloc's `mi_option_t`.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    // SAFETY: getenv reads the environment with a NUL-terminated literal and allocates nothing;
    // mi_option_set only stores an option value.
    unsafe {
        if libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
            libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        }
    }
}

/// A thread-per-core WebSocket (ws:// and wss://) pub/sub gateway.
///
/// With no arguments it serves ws://127.0.0.1:8080 and wss://127.0.0.1:8443 (self-signed certificate)
/// on every CPU. Flags override the config file. Logging: RUST_LOG (e.g. RUST_LOG=wsgate=debug).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// TOML config file (see examples/wsgate.toml for every key).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// ws:// listen address, or "off" [config: listen.ws; default 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    ws: Option<String>,
    /// wss:// listen address, or "off" [config: listen.wss; default 127.0.0.1:8443].
    #[arg(long, value_name = "ADDR")]
    wss: Option<String>,
    /// TLS certificate chain (PEM) [config: tls.cert; default: generate a self-signed one].
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// TLS private key (PEM) [config: tls.key].
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Worker cores, 0 = one per CPU [config: cores].
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// IO driver [config: driver].
    #[arg(long, value_enum)]
    driver: Option<DriverChoice>,
    /// Path of the pub/sub WebSocket route [config: routes.pubsub; default /ws].
    #[arg(long, value_name = "PATH")]
    pubsub_path: Option<String>,
    /// Path of the echo WebSocket route [config: routes.echo; default /echo].
    #[arg(long, value_name = "PATH")]
    echo_path: Option<String>,
    /// Admin listener (API, /metrics, status page), or "off" [config: admin.listen; default 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Print the effective configuration and exit.
    #[arg(long)]
    check: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply(Overrides {
        ws: cli.ws,
        wss: cli.wss,
        cert: cli.cert,
        key: cli.key,
        cores: cli.cores,
        driver: cli.driver,
        pubsub_path: cli.pubsub_path,
        echo_path: cli.echo_path,
        admin: cli.admin,
    });
    config.validate()?;
    if cli.check {
        let _ = writeln!(std::io::stdout(), "{config:#?}");
        return Ok(());
    }
    let routes = config.routes.clone();
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let gw = Gateway::start(config)?;
    print_banner(&gw, &routes);
    let handle = gw.shutdown_handle();
    std::thread::spawn(move || {
        let mut stopping = false;
        for sig in signals.forever() {
            match sig {
                SIGHUP => {
                    if let Err(e) = handle.reload() {
                        tracing::error!(error = %e, "reload failed; keeping the current certificate and keys");
                    }
                }
                _ if stopping => {
                    tracing::warn!(signal = sig, "second signal: exiting without draining");
                    std::process::exit(1);
                }
                _ => {
                    tracing::info!(
                        signal = sig,
                        "shutting down: closing sessions with 1001 (signal again to exit at once)"
                    );
                    stopping = true;
                    handle.shutdown();
                }
            }
        }
    });
    gw.wait();
    Ok(())
}

fn print_banner(gw: &Gateway, routes: &wsgate::config::RoutesConfig) {
    // Written with `writeln!` and errors ignored: a closed stdout must not take the gateway down.
    let mut out = std::io::stdout().lock();
    let drivers = gw.drivers();
    let _ = writeln!(
        out,
        "wsgate {} running on {} core(s) ({:?})",
        env!("CARGO_PKG_VERSION"),
        drivers.len(),
        drivers
    );
    if let Some(a) = gw.ws_addr() {
        let _ = writeln!(out, "  pub/sub  ws://{a}{}", routes.pubsub);
        let _ = writeln!(out, "  echo     ws://{a}{}", routes.echo);
        let _ = writeln!(out, "  health   http://{a}{}", routes.health);
    }
    if let Some(a) = gw.wss_addr() {
        let _ = writeln!(out, "  pub/sub  wss://{a}{}", routes.pubsub);
        let _ = writeln!(out, "  echo     wss://{a}{}", routes.echo);
    }
    if let Some(pem) = gw.self_signed_cert_pem() {
        let path = std::env::temp_dir().join("wsgate-self-signed.pem");
        let _ = match std::fs::write(&path, pem) {
            Ok(()) => writeln!(
                out,
                "  TLS: generated a self-signed certificate for localhost/127.0.0.1, saved to {}\n       (trust that file in your client, or skip verification for a quick try: websocat -k)",
                path.display()
            ),
            Err(e) => writeln!(out, "  TLS: generated a self-signed certificate (could not save it: {e})"),
        };
    }
    if let Some(a) = gw.admin_addr() {
        let _ = writeln!(
            out,
            "  admin    http://{a}/  (status page; /metrics, /api/stats, POST /api/publish)"
        );
    }
    if let Some(a) = gw.ws_addr() {
        let _ = writeln!(
            out,
            "Try:  websocat ws://{a}{}   then type {{\"type\":\"subscribe\",\"topic\":\"news\",\"id\":1}}",
            routes.pubsub
        );
    }
    let _ = writeln!(out, "Stop with Ctrl-C (sessions get close 1001).");
    let _ = out.flush();
}

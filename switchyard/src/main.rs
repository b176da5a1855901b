//! `switchyard`: parse the command line, then hand over to [`switchyard::server::run`]
//! (build the process, serve it until SIGTERM/SIGINT, drain).

use clap::Parser;
use std::process::ExitCode;
use switchyard::config::{Cli, Command, DemoArgs, LogFormat, ServeArgs, Server};
use switchyard::{demo, server, token};
use tokio_util::sync::CancellationToken;

/// jemalloc instead of glibc's malloc (issue #17, idle memory): glibc kept the heap stretched
/// after a burst of handshakes and after connections closed (a gateway that had held 18,000
/// connections stayed at its peak RSS once they were gone), and its per-thread arenas
/// fragment under connection churn. jemalloc's background thread (switched on first thing in
/// `main`) returns pages unused for its decay time (10 s) to the system; its other settings
/// can be changed at run time with `_RJEM_MALLOC_CONF` (jemalloc's `MALLOC_CONF` syntax).
///
/// Kept after an A/B (issue #17 §2, 2 gateways, 36,000 idle connections in two rooms each,
/// `loadgen idle --levels 5000,10000,18000`, RSS summed; machine shared, load average 9–15, so
/// 26k–33k of the 36k connected): KiB per connection glibc 6.07, jemalloc 6.23, jemalloc
/// `narenas:1` 6.04, glibc `MALLOC_ARENA_MAX=2` 6.92 — within this machine's noise (on an idle
/// machine glibc was 4.54 against 6.21) — and 15 s after every client left glibc 255 MiB
/// (`MALLOC_ARENA_MAX=2` 246), still its peak, against jemalloc's 93 (`narenas:1` 101). A
/// gateway that keeps the RSS of its busiest minute for good is the worse trade; `narenas:1`
/// was no clear win, so no `malloc_conf` is built in. The live heap per idle connection is
/// ≈ 4.0 KiB either way (heaptrack; benches/analysis.md, "Idle memory").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Without it, freed pages go back only when the same arena allocates again: an idle
    // gateway after a burst would keep them.
    if let Err(err) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("warning: jemalloc's background thread did not start: {err}");
    }
    let cli = Cli::parse();
    let (process, args) = match cli.command.unwrap_or(Command::All(cli.serve)) {
        Command::Token(args) => {
            return match token::make(&args) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Publish(args) => {
            let result = tokio::runtime::Runtime::new()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(switchyard::publish::run(&args)));
            return match result {
                Ok(offset) => {
                    println!("{offset}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Migrate(args) => {
            let result = tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(switchyard::database::migrate(&args)));
            return match result {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Demo(args) => {
            let serve = args.serve.serve.clone();
            (Process::Demo(Box::new(args)), serve)
        }
        Command::All(args) => (
            Process::Server(Box::new(Server::All(args.clone()))),
            args.serve,
        ),
        Command::Gateway(args) => (
            Process::Server(Box::new(Server::Gateway(args.clone()))),
            args.serve,
        ),
        Command::Api(args) => (
            Process::Server(Box::new(Server::Api(args.clone()))),
            args.serve,
        ),
    };
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(process, args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// What a serving process runs.
enum Process {
    Server(Box<Server>),
    /// `all` plus the simulator (its settings include the server's).
    Demo(Box<DemoArgs>),
}

async fn serve(process: Process, args: ServeArgs) -> anyhow::Result<()> {
    let listener =
        listen(&args).map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match process {
        Process::Server(server) => server::run(*server, listener, shutdown.cancelled_owned()).await,
        Process::Demo(demo) => demo::run(*demo, listener, shutdown).await,
    }
}

/// The listening socket. Accepted sockets inherit its send buffer size, so a configured
/// `SWITCHYARD_SOCKET_SEND_BUFFER_BYTES` bounds the kernel memory behind every client.
fn listen(args: &ServeArgs) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match args.listen {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if args.socket_send_buffer_bytes > 0 {
        socket.set_send_buffer_size(args.socket_send_buffer_bytes)?;
    }
    socket.bind(args.listen)?;
    socket.listen(4096)
}

/// SIGTERM or SIGINT starts the drain.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        tracing::error!("cannot install the SIGTERM handler");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
    shutdown.cancel();
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colors only on a terminal: logs piped to a file or a collector stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

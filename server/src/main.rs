//! `receiptd`: parses and validates configuration, binds, and runs the server.

use receipts_server::auth::{Role, mint_token};
use receipts_server::config::{Command, LoadError, load};
use std::process::ExitCode;

/// mimalloc: glibc's malloc was a tenth of the server's samples under load,
/// with its chunk consolidation on the request path (BENCHMARKS.md, "The
/// allocator and the id lookups").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits' EX_USAGE: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    receipts_server::tls::install_default_provider();
    let loaded = match load(std::env::args_os()) {
        Ok(l) => l,
        Err(LoadError::Args(e)) => {
            // --help and --version print and succeed; anything else is a
            // configuration error, named by clap.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(e) => {
            eprintln!("receiptd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let cli = &loaded.cli;
    if let Some(Command::Config) = &cli.command {
        print!("{}", loaded.to_toml());
        return match cli.serve.validate() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("receiptd: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    if let Some(Command::Health(args)) = &cli.command {
        return match receipts_server::probe::check(args, &cli.serve).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ receipts_server::probe::ProbeError::Unhealthy(_)) => {
                eprintln!("receiptd health: {e}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("receiptd health: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        };
    }
    if let Some(Command::Token(args)) = &cli.command {
        let Some(secret) = &cli.serve.jwt_secret else {
            eprintln!("receiptd token: --jwt-secret (or RECEIPTS_JWT_SECRET) is required");
            return ExitCode::from(EXIT_CONFIG);
        };
        let role: Role = match args.role.parse() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("receiptd token: --role: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let ttl = std::time::Duration::from_secs(args.ttl_secs);
        return match mint_token(secret, args.sub, role, ttl) {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("receiptd token: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = cli.serve.clone();
    let telemetry = match receipts_server::telemetry::init(config.log_json) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("receiptd: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // A configuration error is said once, before anything else.
    if let Err(e) = config.validate() {
        eprintln!("receiptd: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    tracing::info!(config = %loaded.summary(), "effective configuration");
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %config.listen, "cannot bind: {e}");
            return ExitCode::FAILURE;
        }
    };
    // "listening" is said by `run`, once the store is open and calls are
    // answered.
    if telemetry.exporting() {
        tracing::info!("exporting traces over OTLP/gRPC");
    }
    let served = receipts_server::run(listener, config, shutdown_signal()).await;
    telemetry.shutdown().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ receipts_server::RunError::Config(_)) => {
            tracing::error!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

//! The `comethub` binary: flags, logging, a single-threaded runtime, and [`comethub::run`].

use std::process::ExitCode;

use comethub::server::Server;
use comethub::{Config, listen, os, shutdown};
use tracing::error;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    os::tune_allocator();
    let (config, matches) = match Config::load_from(std::env::args_os().collect()) {
        Ok(loaded) => loaded,
        Err(comethub::config::LoadError::Args(err)) => err.exit(),
        Err(comethub::config::LoadError::File(err)) => {
            eprintln!("comethub: {err}");
            return ExitCode::from(2);
        }
    };
    if config.print_config {
        print!("{}", comethub::config::to_toml(&matches));
        return ExitCode::SUCCESS;
    }
    if let Some(comethub::config::Command::Token(t)) = &config.command {
        let pem = match &t.private_key {
            Some(path) => match std::fs::read(path) {
                Ok(pem) => Some(pem),
                Err(err) => {
                    eprintln!("comethub token: --private-key {}: {err}", path.display());
                    return ExitCode::from(2);
                }
            },
            None => None,
        };
        let signer = match (&pem, &t.key) {
            (Some(pem), _) => comethub::auth::Signer::PrivateKey(pem),
            (None, Some(key)) => comethub::auth::Signer::Secret(key),
            (None, None) => comethub::auth::Signer::Secret(""),
        };
        let minted = comethub::auth::mint(
            signer,
            &t.subscribe,
            &t.publish,
            t.ttl,
            t.audience.as_deref(),
            t.issuer.as_deref(),
        );
        return match minted {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("comethub token: {err}");
                ExitCode::from(2)
            }
        };
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            error!(cause = %err, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Every check is made before anything is bound.
        let server = match Server::new(config) {
            Ok(server) => server,
            Err(err) => {
                error!(%err, "cannot start");
                return ExitCode::from(2);
            }
        };
        let listeners = match listen::inherited() {
            Ok(Some(inherited)) => inherited,
            Ok(None) => match listen::bind(server.listen(), server.unix_mode()) {
                Ok(bound) => bound,
                Err(err) => {
                    error!(%err, "cannot listen");
                    return ExitCode::FAILURE;
                }
            },
            Err(err) => {
                error!(%err, "cannot start");
                return ExitCode::from(2);
            }
        };
        match server.serve(listeners, shutdown::signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                error!(%err, "cannot start");
                ExitCode::from(2)
            }
        }
    })
}

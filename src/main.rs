//! The `comethub` binary: flags, logging, a single-threaded runtime, and [`comethub::run`].

use std::process::ExitCode;

use comethub::{Config, listen, os, server, shutdown};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    os::tune_allocator();
    let (mut config, matches) = match Config::load_from(std::env::args_os().collect()) {
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

    if let Err(err) = config.check() {
        error!(%err, "cannot start");
        return ExitCode::from(2);
    }
    if let Some(url) = &config.redis
        && let Err(err) = comethub::store::redis::check_url(url)
    {
        error!(%err, "cannot start");
        return ExitCode::from(2);
    }
    let nofile = match os::raise_nofile() {
        Ok(n) => n,
        Err(err) => {
            error!(cause = %err, "cannot read the open-files limit");
            1024
        }
    };
    config.max_connections = config.max_connections();
    config.max_memory = Some(config.max_memory());
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
        let listeners = match listen::inherited() {
            Ok(Some(inherited)) => inherited,
            Ok(None) => match listen::bind(&config.listen, config.unix_mode) {
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
        if let Err(err) = listen::read_only(&listeners, &config.publish_on) {
            error!(%err, "cannot start");
            return ExitCode::from(2);
        }
        let addresses: Vec<String> = listeners.iter().map(listen::Listener::address).collect();
        info!(
            addr = %addresses.first().map_or("", String::as_str),
            listeners = %addresses.join(","),
            nofile,
            timeout = config.timeout,
            history = config.history,
            history_age = config.history_age,
            max_message = config.max_message,
            max_memory = config.max_memory,
            max_batch_bytes = config.max_batch_bytes,
            write_timeout = config.write_timeout,
            cors_origin = %config.cors_origin,
            header_timeout = config.header_timeout,
            max_connections = config.max_connections,
            max_subscribers = config.max_subscribers,
            max_channels = config.max_channels,
            publish_token = config.publish_token.is_some(),
            admin_token = config.admin_token.is_some(),
            cluster = config.redis.is_some(),
            tls = config.tls_cert.is_some(),
            "listening"
        );
        server::run(listeners, config, shutdown::signal()).await;
        ExitCode::SUCCESS
    })
}

//! The `api-gateway-mcp` command line: `serve`, `stdio` and `check`.

use std::path::PathBuf;
use std::process::ExitCode;

use api_gateway_mcp::config::{Config, ConfigErrors, EMBEDDED_DEFAULT};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "api-gateway-mcp",
    version,
    about = "A policy gateway that lets AI agents call HTTP APIs safely"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MCP, proxy and admin listeners. Without --config, the embedded defaults
    /// (config/minimal.toml) are used.
    Serve {
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Serve the MCP tools over stdin/stdout (logs go to stderr).
    Stdio {
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate a config file: prints OK, or every error with its key path, and exits 0 or 1.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

fn load(path: Option<&PathBuf>) -> Result<Config, ConfigErrors> {
    match path {
        Some(p) => Config::load(p),
        None => Config::parse(EMBEDDED_DEFAULT, &|name| std::env::var(name).ok()),
    }
}

fn init_logs() {
    // Logs always go to stderr: stdout belongs to the stdio MCP transport.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn,rmcp=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(_) => {
                println!("OK");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                println!("{}: {} error(s)", config.display(), errors.0.len());
                for e in &errors.0 {
                    println!("  {e}");
                }
                ExitCode::from(1)
            }
        },
        Command::Serve { config } => {
            init_logs();
            match load(config.as_ref()) {
                Ok(c) => match api_gateway_mcp::server::serve(c) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("cannot start: {e}");
                        ExitCode::from(1)
                    }
                },
                Err(e) => {
                    eprintln!("invalid configuration:\n{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Stdio { config } => {
            init_logs();
            let result = load(config.as_ref())
                .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))
                .and_then(api_gateway_mcp::server::stdio);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

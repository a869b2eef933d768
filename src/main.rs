//! The `api-gateway-mcp` command line: `serve`, `stdio`, `check`, `explain`, `lock`,
//! `openapi inspect`, `surface diff|approve`, `credentials`, `audit verify`, `health` and
//! `hash-key`.

/// mimalloc: less CPU per request than glibc's malloc on both doors, and no contention
/// between the worker threads' arenas (BENCHMARKS.md, "the allocator"). Built with `no_thp`:
/// with transparent huge pages its eagerly committed first arena made every first touch of a
/// 2 MiB stretch resident, and a gateway idled at 26 MB instead of 15.5.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// Validate a config file: prints every error with its key path (exit 1), or its
    /// warnings (codes W001…) and OK (exit 0; with --strict, 1 when there are warnings).
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        strict: bool,
    },
    /// Show how the gateway would judge a call, stage by stage, without making it: which
    /// rule refuses, or the upstream URL, credential mode and rate limits of an admitted
    /// call. Exit 0 admitted, 3 refused, 2 config or usage error.
    Explain {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The door the call comes through.
        #[arg(long, value_parser = ["mcp", "proxy"], required_unless_present_any = ["replay", "tool"])]
        door: Option<String>,
        #[arg(long, required_unless_present_any = ["replay", "tool"])]
        api: Option<String>,
        #[arg(long, default_value = "GET")]
        method: String,
        /// The path under the API, e.g. /repos/o/r (a ?query may follow).
        #[arg(long, required_unless_present_any = ["replay", "tool"])]
        endpoint: Option<String>,
        /// Instead of door, api, method and endpoint: an MCP tool call, by tool name
        /// (`api_gateway` or a generated tool) with --arguments.
        #[arg(long, conflicts_with_all = ["door", "api", "endpoint", "replay"])]
        tool: Option<String>,
        /// With --tool: the call's arguments as JSON.
        #[arg(long, value_name = "JSON", requires = "tool")]
        arguments: Option<String>,
        /// Instead of one call: judge every call recorded in this audit store (JSON lines or
        /// SQLite) with the config, and list those whose decision would change. Exit 0 when
        /// none would, 3 when some would.
        #[arg(long, value_name = "AUDIT", conflicts_with_all = ["door", "api", "endpoint"])]
        replay: Option<PathBuf>,
        /// A query parameter, k=v (repeatable).
        #[arg(long, value_name = "K=V")]
        query: Vec<String>,
        /// A request header, 'K: V' (repeatable).
        #[arg(long, value_name = "K: V")]
        header: Vec<String>,
        /// Authenticate with this API key.
        #[arg(long, conflicts_with_all = ["jwt", "principal"])]
        key: Option<String>,
        /// Authenticate with this bearer token.
        #[arg(long, conflicts_with = "principal")]
        jwt: Option<String>,
        /// State the caller instead of authenticating: '{"subject": "alice", "roles": ["reader"]}'
        /// (stages address to signature are then skipped).
        #[arg(long, value_name = "JSON")]
        principal: Option<String>,
        /// The client address (default 127.0.0.1).
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        /// Also resolve the API's host and put its addresses past the SSRF guard.
        #[arg(long)]
        resolve: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 when the gateway's admin listener answers /healthz (for container health
    /// checks in images without a shell or curl).
    Health {
        /// The admin listener.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: String,
    },
    /// Per-caller upstream credentials in `[credential_store]`: set (secret on stdin),
    /// delete, list (fingerprints only), rotate-key (re-seal records under the current key).
    Credentials {
        #[command(subcommand)]
        command: CredentialsCommand,
    },
    /// Write the lock file of the MCP tool surface (every tool's fingerprint and the total)
    /// that `[mcp] surface_lock` makes the gateway hold to. Commit it: tool changes become
    /// reviewable diffs.
    Lock {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Where to write it (default: `[mcp] surface_lock`, else surface.lock.json beside the
        /// config).
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// OpenAPI documents behind `[apis.openapi]`.
    Openapi {
        #[command(subcommand)]
        command: OpenapiCommand,
    },
    /// The pinned tool surface: compare each API's document with its pin_sha256 and the
    /// surface with the lock file (diff), or accept the current documents (approve).
    Surface {
        #[command(subcommand)]
        command: SurfaceCommand,
    },
    /// Mint a token for the config's first JWT issuer (`[auth.jwt]`), for trying bearer
    /// authentication in development. Prints the token.
    Token {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The token's subject.
        #[arg(long, default_value = "dev")]
        sub: String,
        /// Roles, comma-separated (in the issuer's roles claim).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Lifetime, e.g. 15m, 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The environment variable that holds the HS shared secret.
        #[arg(long, value_name = "VAR", default_value = "JWT_SECRET")]
        secret_env: String,
        /// A private key (PEM) for RS/PS/ES/EdDSA issuers.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Audit-trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Generate a strong API key (256 random bits) and print it with the hash that goes into
    /// `[[auth.api_keys]]`. The key itself is never stored by the gateway.
    HashKey {
        /// Hash an existing key read from stdin instead of generating one.
        #[arg(long)]
        stdin: bool,
        /// Print key_hmac = HMAC-SHA256(pepper, key) with the pepper from this environment
        /// variable (the one `auth.api_key_pepper` reads), instead of key_sha256.
        #[arg(long, value_name = "VAR")]
        pepper_env: Option<String>,
        /// The `name` for the printed config entry.
        #[arg(long, default_value = "my-key")]
        name: String,
    },
}

#[derive(Subcommand)]
enum CredentialsCommand {
    /// Store a principal's secret for a `per_principal` API; the secret is read from stdin.
    Set {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long)]
        api: String,
        /// The principal id as in the audit record (`jwt:alice`, `key:ci`).
        #[arg(long)]
        principal: String,
    },
    /// Remove a principal's credential (a connected account is revoked first).
    Delete {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long)]
        api: String,
        #[arg(long)]
        principal: String,
    },
    /// List stored credentials: API, principal, kind, fingerprint, dates.
    List {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long)]
        api: Option<String>,
    },
    /// Re-seal every record under the current key (credential_store.key_env); afterwards the
    /// keys in old_key_envs can be removed.
    RotateKey {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum OpenapiCommand {
    /// Print each operation as included, renamed or skipped (and why), with schema and
    /// tool-list sizes. Exit 0 when the document was read, 1 when it cannot be.
    Inspect {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long)]
        api: String,
        /// Print one JSON document: {"operations": [{operation, method, path, status, tool, reason}], …}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SurfaceCommand {
    /// Compare each API's document with its pin_sha256, and the tool surface with the lock
    /// file. Exit 0 when nothing differs, 3 when something does.
    Diff {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Only this API's document.
        #[arg(long)]
        api: Option<String>,
    },
    /// Accept the current documents: write their fingerprints into the config's
    /// pin_sha256 (comments and layout kept) and rewrite the lock file, if one is set.
    Approve {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Only this API's document.
        #[arg(long)]
        api: Option<String>,
    },
}

/// `lock`: writes the surface's lock file.
fn lock(config_path: &std::path::Path, output: Option<PathBuf>) -> Result<(), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let (surface, _) = block_on(api_gateway_mcp::surface::build_now(&config))?;
    for (api, d) in &surface.documents {
        if let Some(e) = &d.error {
            return Err(format!("API {api}: {e}"));
        }
    }
    let path = output
        .or_else(|| config.mcp.surface_lock.clone())
        .unwrap_or_else(|| {
            config_path
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("surface.lock.json")
        });
    let text = serde_json::to_string_pretty(&surface.lock_json()).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!(
        "wrote {}: {} entries, surface sha256 {}",
        path.display(),
        surface.fingerprints.len(),
        surface.sha256
    );
    Ok(())
}

/// `openapi inspect`.
fn openapi_inspect(config: &std::path::Path, api: &str, as_json: bool) -> Result<(), String> {
    let config = Config::load(config).map_err(|e| e.to_string())?;
    let a = config
        .api(api)
        .cloned()
        .ok_or_else(|| format!("no API named {api:?}"))?;
    let bytes = block_on(api_gateway_mcp::surface::read_document(&config, &a))??;
    let report = api_gateway_mcp::surface::inspect(&a, &bytes)?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "{}: OpenAPI {}, document sha256 {}{}",
        report["api"].as_str().unwrap_or(""),
        report["openapi"].as_str().unwrap_or(""),
        report["document_sha256"].as_str().unwrap_or(""),
        match report["pinned"].as_bool() {
            Some(true) => " (pinned)",
            Some(false) => " (DIFFERS from pin_sha256)",
            None => "",
        }
    );
    for o in report["operations"].as_array().into_iter().flatten() {
        let status = o["status"].as_str().unwrap_or("");
        let line = format!(
            "{:<8} {:<7} {}",
            status,
            o["method"].as_str().unwrap_or(""),
            o["path"].as_str().unwrap_or("")
        );
        match status {
            "skipped" => println!("{line}  ({})", o["reason"].as_str().unwrap_or("")),
            _ => println!(
                "{line}  -> {} [{} B schema]{}",
                o["tool"].as_str().unwrap_or(""),
                o["input_schema_bytes"],
                o["reason"]
                    .as_str()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        }
    }
    println!(
        "{} included, {} skipped; tools/list {} bytes; served as {}",
        report["included"],
        report["skipped"],
        report["tools_list_bytes"],
        if report["mode"] == "search" {
            "progressive discovery (list_apis search, api_gateway operation)"
        } else {
            "one tool per operation"
        }
    );
    Ok(())
}

/// `surface diff` and `surface approve`.
fn surface(command: SurfaceCommand) -> Result<ExitCode, String> {
    let (path, only, approve) = match command {
        SurfaceCommand::Diff { config, api } => (config, api, false),
        SurfaceCommand::Approve { config, api } => (config, api, true),
    };
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    if let Some(a) = &only {
        if config.api(a).is_none_or(|x| x.openapi.is_none()) {
            return Err(format!("no API named {a:?} with [apis.openapi]"));
        }
    }
    let mut differs = false;
    let mut pins = Vec::new();
    for api in &config.apis {
        let Some(cfg) = &api.openapi else { continue };
        if only.as_ref().is_some_and(|o| o != &api.name) {
            continue;
        }
        let bytes = block_on(api_gateway_mcp::surface::read_document(&config, api))??;
        let doc = api_gateway_mcp::openapi::doc::parse(&bytes, cfg.max_document_bytes)
            .map_err(|e| format!("API {}: {e}", api.name))?;
        match cfg.pin_sha256.as_deref() {
            Some(p) if p == doc.sha256 => println!("{}: document matches pin_sha256 {p}", api.name),
            Some(p) => {
                differs = true;
                println!(
                    "{}: document {} DIFFERS from pin_sha256 {p}",
                    api.name, doc.sha256
                );
            }
            None => {
                differs = true;
                println!(
                    "{}: document {} is not pinned (no pin_sha256)",
                    api.name, doc.sha256
                );
            }
        }
        pins.push((api.name.clone(), doc.sha256));
    }
    if approve {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let apis = doc
            .get_mut("apis")
            .and_then(|a| a.as_array_of_tables_mut())
            .ok_or("the config has no [[apis]] tables to write pins into")?;
        for table in apis.iter_mut() {
            let name = table
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string();
            let Some((_, sha)) = pins.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            let Some(openapi) = table.get_mut("openapi").and_then(|o| o.as_table_like_mut()) else {
                continue;
            };
            openapi.insert("pin_sha256", toml_edit::value(sha.clone()));
            println!("{name}: pinned {sha}");
        }
        std::fs::write(&path, doc.to_string())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if config.mcp.surface_lock.is_some() {
            lock(&path, None)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if config.mcp.surface_lock.is_some() {
        let (surface, _) = block_on(api_gateway_mcp::surface::build_now(&config))?;
        match surface.check_lock(&config) {
            Ok(()) => println!("the tool surface matches the lock file"),
            Err(e) => {
                differs = true;
                println!("{e}");
            }
        }
    }
    Ok(if differs {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit file's hash chain: exits 0 when intact, 1 naming the first bad record
    /// when one was edited, dropped or reordered.
    Verify {
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// An SQLite audit database (`audit.sink = "sqlite"`).
        #[arg(long, value_name = "PATH")]
        sqlite: Option<PathBuf>,
    },
    /// Print matching records as JSON lines, newest first (the console's audit search,
    /// offline): by principal, API, decision, rule and time.
    Search {
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// An SQLite audit database (`audit.sink = "sqlite"`).
        #[arg(long, value_name = "PATH")]
        sqlite: Option<PathBuf>,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        api: Option<String>,
        /// allow, deny, error, or shadow (a rule in shadow mode would have refused).
        #[arg(long)]
        decision: Option<String>,
        /// The refusing rule (or a shadow rule), e.g. `rbac.roles[0].deny[0]`.
        #[arg(long)]
        rule: Option<String>,
        /// RFC 3339 bounds on the record's time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// Most records printed.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// `audit search`: the console's search over a file or database, as JSON lines.
fn audit_search(
    file: Option<PathBuf>,
    sqlite: Option<PathBuf>,
    query: api_gateway_mcp::audit::search::Query,
) -> ExitCode {
    let sink = match audit_store("search", file, sqlite) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(d) = &query.decision {
        if !matches!(d.as_str(), "allow" | "deny" | "error" | "shadow") {
            eprintln!("audit search: --decision is one of allow, deny, error, shadow");
            return ExitCode::from(2);
        }
    }
    let max = query.limit;
    let mut n = 0;
    let result = api_gateway_mcp::audit::search::scan(&sink, &query, |_, r| {
        if let Some(r) = r {
            println!("{r}");
            n += 1;
        }
        n < max
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("audit search: {e}");
            ExitCode::from(2)
        }
    }
}

/// The audit store an `audit` command reads: exactly one of `--file` or `--sqlite`.
fn audit_store(
    command: &str,
    file: Option<PathBuf>,
    sqlite: Option<PathBuf>,
) -> Result<api_gateway_mcp::config::AuditSink, ExitCode> {
    use api_gateway_mcp::config::AuditSink;
    match (file, sqlite) {
        (Some(f), None) => Ok(AuditSink::File(f)),
        (None, Some(db)) => Ok(AuditSink::Sqlite(db)),
        _ => {
            eprintln!("audit {command}: give exactly one of --file or --sqlite");
            Err(ExitCode::from(2))
        }
    }
}

fn audit_verify(file: Option<PathBuf>, sqlite: Option<PathBuf>) -> ExitCode {
    use api_gateway_mcp::audit::{verify_file, verify_sqlite, Verdict};
    use api_gateway_mcp::config::AuditSink;
    let verdict = match audit_store("verify", file, sqlite) {
        Ok(AuditSink::File(f)) => verify_file(&f),
        Ok(AuditSink::Sqlite(db)) => verify_sqlite(&db),
        Ok(AuditSink::Stdout) | Err(_) => return ExitCode::from(2),
    };
    match verdict {
        Ok(Verdict::Intact { records, first_seq }) => {
            if first_seq > 1 {
                println!(
                    "OK: {records} records, chain intact from record {first_seq} (earlier records were purged by retention)"
                );
            } else {
                println!("OK: {records} records, chain intact");
            }
            ExitCode::SUCCESS
        }
        Ok(Verdict::Broken { line, seq, why }) => {
            let which = seq.map_or(String::new(), |s| format!(" (record {s})"));
            println!("BROKEN at line {line}{which}: {why}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("audit verify: {e}");
            ExitCode::from(2)
        }
    }
}

fn health(admin: &str) -> ExitCode {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    use std::time::Duration;
    let check = || -> Result<bool, String> {
        let addr = admin
            .to_socket_addrs()
            .map_err(|e| format!("{admin}: {e}"))?
            .next()
            .ok_or_else(|| format!("{admin}: no address"))?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("{admin}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: health\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf[..n].starts_with(b"HTTP/1.1 200"))
    };
    match check() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("health: {admin} did not answer 200");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("health: {e}");
            ExitCode::from(1)
        }
    }
}

fn hash_key(stdin: bool, pepper_env: Option<String>, name: &str) -> Result<(), String> {
    use api_gateway_mcp::auth::apikey;
    let pepper = match pepper_env {
        Some(var) => Some(
            std::env::var(&var)
                .ok()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| format!("environment variable {var} is not set"))?,
        ),
        None => None,
    };
    let (key, digest) = if stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        let key = line.trim().to_string();
        if key.is_empty() {
            return Err("no key on stdin".into());
        }
        let digest = hex::encode(apikey::digest(&key, pepper.as_deref()));
        (None, digest)
    } else {
        let (k, d) = apikey::generate(pepper.as_deref())?;
        (Some(k), d)
    };
    let field = if pepper.is_some() {
        "key_hmac"
    } else {
        "key_sha256"
    };
    if let Some(k) = key {
        eprintln!("# Give api_key to the client (shown once); put the entry below in the config.");
        println!("api_key = \"{k}\"");
    }
    println!("[[auth.api_keys]]\nname = \"{name}\"\n{field} = \"{digest}\"\nroles = []");
    Ok(())
}

fn load(path: Option<&PathBuf>) -> Result<Config, ConfigErrors> {
    match path {
        Some(p) => Config::load(p),
        None => Config::parse(EMBEDDED_DEFAULT, &|name| std::env::var(name).ok()),
    }
}

/// `credentials set|delete|list|rotate-key`, on the store the config names.
async fn credentials(command: CredentialsCommand) -> Result<(), String> {
    use api_gateway_mcp::vault::Vault;
    let path = match &command {
        CredentialsCommand::Set { config, .. }
        | CredentialsCommand::Delete { config, .. }
        | CredentialsCommand::List { config, .. }
        | CredentialsCommand::RotateKey { config } => config.clone(),
    };
    let config = std::sync::Arc::new(Config::load(&path).map_err(|e| e.to_string())?);
    if config.credential_store.is_none() {
        return Err(format!("{} has no [credential_store]", path.display()));
    }
    let vault = Vault::new(
        config.clone(),
        std::sync::Arc::new(api_gateway_mcp::egress::Egress::new()),
    )?;
    let api_of = |name: &str| {
        config
            .api(name)
            .cloned()
            .ok_or_else(|| format!("no API named {name:?} in {}", path.display()))
    };
    match command {
        CredentialsCommand::Set { api, principal, .. } => {
            let api = api_of(&api)?;
            let mut secret = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut secret)
                .map_err(|e| format!("cannot read the secret from stdin: {e}"))?;
            let secret = secret.trim_end_matches(['\r', '\n']);
            let rec = vault
                .set_secret(&api, &principal, secret)
                .await
                .map_err(|e| e.message)?;
            println!(
                "stored {} for {} (fingerprint {})",
                rec.api, rec.principal, rec.fingerprint
            );
        }
        CredentialsCommand::Delete { api, principal, .. } => {
            let api = api_of(&api)?;
            match vault
                .delete(&api, &principal)
                .await
                .map_err(|e| e.message)?
            {
                Some(fp) => println!("deleted {} for {principal} (fingerprint {fp})", api.name),
                None => return Err(format!("{principal} has no credential for {}", api.name)),
            }
        }
        CredentialsCommand::List { api, .. } => {
            if let Some(a) = &api {
                api_of(a)?;
            }
            let list = vault.list(api.as_deref()).await.map_err(|e| e.message)?;
            println!(
                "{:<16} {:<32} {:<7} {:<9} {:<20}",
                "API", "PRINCIPAL", "KIND", "FINGERPR", "UPDATED"
            );
            for r in list {
                println!(
                    "{:<16} {:<32} {:<7} {:<9} {:<20}",
                    r.api,
                    r.principal,
                    r.kind,
                    r.fingerprint,
                    api_gateway_mcp::audit::rfc3339_of(r.updated)
                );
            }
        }
        CredentialsCommand::RotateKey { .. } => {
            let (resealed, total) = vault.rotate_keys().await?;
            println!(
                "re-sealed {resealed} of {total} record(s) under key {}",
                vault.current_key_id().unwrap_or("?")
            );
        }
    }
    Ok(())
}

/// Logs go to stderr (stdout belongs to the stdio MCP transport), as `[log] format` says;
/// colour only on a terminal. Pingora's own line for a failed upstream call is off by
/// default: the gateway logs each refusal and failure once, with the request id
/// (`RUST_LOG=pingora_proxy=error` brings it back).
fn init_logs(format: api_gateway_mcp::config::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=off,rmcp=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        api_gateway_mcp::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        api_gateway_mcp::config::LogFormat::Text => {
            builder.with_ansi(std::io::stderr().is_terminal()).init()
        }
    }
}

/// Runs one future to its end on a small runtime of its own (the CLI's async commands).
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(rt.block_on(f))
}

/// `explain --replay`: the recorded calls whose decision `config` would change.
fn replay_audit(config: std::sync::Arc<Config>, audit: &std::path::Path, json: bool) -> ExitCode {
    let fail = |e: String| {
        eprintln!("explain --replay: {e}");
        ExitCode::from(2)
    };
    let events = match read_audit_events(audit) {
        Ok(e) => e,
        Err(e) => return fail(format!("{}: {e}", audit.display())),
    };
    let explainer = match api_gateway_mcp::explain::Explainer::new(config) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let found = match block_on(api_gateway_mcp::explain::replay(&explainer, &events)) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let doc = found.to_json();
    if json {
        println!("{doc}");
    } else {
        for c in doc["calls"].as_array().into_iter().flatten() {
            let side = |v: &serde_json::Value| match v["decision"].as_str() {
                Some("admitted") => "admitted".to_string(),
                _ => format!(
                    "refused {} by {}",
                    v["reason"].as_str().unwrap_or("?"),
                    v["rule"].as_str().unwrap_or("?")
                ),
            };
            println!(
                "{} {} {} {} as {}: {} -> {}",
                c["ts"].as_str().unwrap_or(""),
                c["door"].as_str().unwrap_or(""),
                c["method"].as_str().unwrap_or(""),
                c["path"].as_str().unwrap_or(""),
                c["principal"].as_str().unwrap_or(""),
                side(&c["was"]),
                side(&c["now"])
            );
        }
        println!(
            "{} calls replayed, {} not replayable (refused before authorization), {} would change",
            doc["replayed"], doc["skipped"], doc["changed"]
        );
        for (rule, n) in doc["by_rule"].as_object().into_iter().flatten() {
            println!("  {n} by {rule}");
        }
    }
    if found.changed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// The events of an audit store: a JSON-lines file or an SQLite database.
fn read_audit_events(path: &std::path::Path) -> Result<Vec<serde_json::Value>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.starts_with(b"SQLite format 3\0") {
        let db =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| e.to_string())?;
        let mut stmt = db
            .prepare("SELECT event FROM audit ORDER BY seq")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| e.to_string())?;
        return rows
            .map(|r| {
                r.map_err(|e| e.to_string())
                    .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
            })
            .collect();
    }
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str::<serde_json::Value>(l)
                .map(|v| v["event"].clone())
                .map_err(|e| format!("line {}: {e}", i + 1))
        })
        .collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, strict } => match Config::load(&config) {
            Ok(c) => {
                // The OpenAPI documents read from files or the config must be readable, and
                // the surface they give must match the lock file.
                let errors = api_gateway_mcp::surface::check_documents(&c);
                if !errors.is_empty() {
                    println!("{}: {} error(s)", config.display(), errors.len());
                    for e in &errors {
                        println!("  {e}");
                    }
                    return ExitCode::from(1);
                }
                let warnings = api_gateway_mcp::config::lint::lint(&c);
                for w in &warnings {
                    println!("{w}");
                }
                if warnings.is_empty() {
                    println!("OK");
                    ExitCode::SUCCESS
                } else if strict {
                    println!(
                        "{}: {} warning(s) (--strict)",
                        config.display(),
                        warnings.len()
                    );
                    ExitCode::from(1)
                } else {
                    println!("OK ({} warning(s))", warnings.len());
                    ExitCode::SUCCESS
                }
            }
            Err(errors) => {
                println!("{}: {} error(s)", config.display(), errors.0.len());
                for e in &errors.0 {
                    println!("  {e}");
                }
                ExitCode::from(1)
            }
        },
        Command::Health { admin } => health(&admin),
        Command::Explain {
            config,
            door,
            api,
            method,
            endpoint,
            query,
            header,
            key,
            jwt,
            principal,
            ip,
            resolve,
            json,
            replay,
            tool,
            arguments,
        } => {
            let usage = |e: String| {
                eprintln!("explain: {e}");
                ExitCode::from(2)
            };
            let cfg = match Config::load(&config) {
                Ok(c) => std::sync::Arc::new(c),
                Err(errors) => {
                    return usage(format!(
                        "{}: invalid configuration:\n{errors}",
                        config.display()
                    ))
                }
            };
            if let Some(audit) = replay {
                return replay_audit(cfg, &audit, json);
            }
            let (mut door, mut api, mut endpoint, mut method) = (
                door.unwrap_or_default(),
                api.unwrap_or_default(),
                endpoint.unwrap_or_default(),
                method,
            );
            let (mut query, mut header, mut opaque_segments) = (query, header, false);
            if let Some(tool) = tool {
                let arguments = match arguments
                    .as_deref()
                    .map(serde_json::from_str::<serde_json::Value>)
                    .transpose()
                {
                    Ok(a) => a.unwrap_or_default(),
                    Err(e) => return usage(format!("--arguments: {e}")),
                };
                let surface = match block_on(api_gateway_mcp::surface::build_now(&cfg)) {
                    Ok((s, _)) => s,
                    Err(e) => return usage(e),
                };
                let call =
                    match api_gateway_mcp::explain::ToolCall::new(&surface, &tool, &arguments) {
                        Ok(c) => c,
                        Err(e) => return usage(format!("--tool {tool}: {e}")),
                    };
                door = "mcp".into();
                api = call.api;
                endpoint = call.endpoint;
                method = call.method.to_string();
                query = call
                    .query
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                header = call
                    .headers
                    .into_iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                opaque_segments = call.opaque_segments;
            }
            let pairs = |list: Vec<String>, sep: char, what: &str| {
                list.into_iter()
                    .map(|x| {
                        x.split_once(sep)
                            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                            .ok_or_else(|| format!("--{what} {x:?}: expected K{sep}V"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            };
            let described = (|| -> Result<_, String> {
                Ok(api_gateway_mcp::explain::Described {
                    door: if door == "mcp" {
                        api_gateway_mcp::types::Door::Mcp
                    } else {
                        api_gateway_mcp::types::Door::Proxy
                    },
                    api,
                    method: http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("--method {method:?} is not a method"))?,
                    endpoint,
                    query: pairs(query, '=', "query")?,
                    headers: pairs(header, ':', "header")?,
                    key,
                    jwt,
                    principal: principal
                        .map(|p| serde_json::from_str(&p).map_err(|e| format!("--principal: {e}")))
                        .transpose()?,
                    ip,
                    resolve,
                    opaque_segments,
                })
            })();
            let described = match described {
                Ok(d) => d,
                Err(e) => return usage(e),
            };
            match block_on(api_gateway_mcp::explain::explain(cfg, &described)).and_then(|r| r) {
                Ok(doc) => {
                    if json {
                        println!("{doc}");
                    } else {
                        print!("{}", api_gateway_mcp::explain::text(&doc));
                    }
                    if doc["decision"] == "admitted" {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(3)
                    }
                }
                Err(e) => usage(e),
            }
        }
        Command::Audit {
            command: AuditCommand::Verify { file, sqlite },
        } => audit_verify(file, sqlite),
        Command::Audit {
            command:
                AuditCommand::Search {
                    file,
                    sqlite,
                    principal,
                    api,
                    decision,
                    rule,
                    since,
                    until,
                    limit,
                },
        } => audit_search(
            file,
            sqlite,
            api_gateway_mcp::audit::search::Query {
                principal,
                api,
                decision,
                rule,
                since,
                until,
                before: None,
                limit,
            },
        ),
        Command::Token {
            config,
            sub,
            roles,
            ttl,
            secret_env,
            key,
        } => {
            let minted = (|| -> Result<String, String> {
                let cfg = Config::load(&config).map_err(|e| e.to_string())?;
                let issuer = cfg
                    .auth
                    .jwt_issuers
                    .first()
                    .ok_or_else(|| format!("{} has no [auth.jwt]", config.display()))?;
                let ttl = api_gateway_mcp::config::parse_duration(&ttl)
                    .map_err(|e| format!("--ttl: {e}"))?;
                let secret = std::env::var(&secret_env).ok();
                let pem = match &key {
                    Some(k) => {
                        Some(std::fs::read(k).map_err(|e| format!("--key {}: {e}", k.display()))?)
                    }
                    None => None,
                };
                let token = api_gateway_mcp::auth::jwt::mint(
                    issuer,
                    secret.as_deref().map(str::as_bytes),
                    pem.as_deref(),
                    &sub,
                    &roles,
                    ttl,
                )?;
                // Only a token the config itself accepts is printed.
                let verifier = api_gateway_mcp::auth::jwt::JwtVerifier::new(
                    std::slice::from_ref(issuer),
                    std::sync::Arc::new(api_gateway_mcp::egress::Egress::with_nameservers(
                        &cfg.nameservers,
                    )),
                )?;
                block_on(verifier.verify(&token))?.map_err(|e| {
                    format!(
                        "the minted token is not accepted by {} ({}: {}): is --secret-env {secret_env} (or --key) the issuer's key?",
                        config.display(),
                        e.reason_code(),
                        e.message
                    )
                })?;
                Ok(token)
            })();
            match minted {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("token: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Lock { config, output } => match lock(&config, output) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("lock: {e}");
                ExitCode::from(1)
            }
        },
        Command::Openapi {
            command: OpenapiCommand::Inspect { config, api, json },
        } => match openapi_inspect(&config, &api, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("openapi inspect: {e}");
                ExitCode::from(1)
            }
        },
        Command::Surface { command } => match surface(command) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("surface: {e}");
                ExitCode::from(1)
            }
        },
        Command::Credentials { command } => match block_on(credentials(command)).and_then(|r| r) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("credentials: {e}");
                ExitCode::from(1)
            }
        },
        Command::HashKey {
            stdin,
            pepper_env,
            name,
        } => match hash_key(stdin, pepper_env, &name) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hash-key: {e}");
                ExitCode::from(1)
            }
        },
        Command::Serve { config } => match load(config.as_ref()) {
            Ok(c) => {
                init_logs(c.log_format);
                match api_gateway_mcp::server::serve(c, config) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("cannot start: {e}");
                        ExitCode::from(1)
                    }
                }
            }
            Err(e) => {
                eprintln!("invalid configuration:\n{e}");
                ExitCode::from(1)
            }
        },
        Command::Stdio { config } => {
            let result = load(config.as_ref())
                .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))
                .and_then(|c| {
                    init_logs(c.log_format);
                    api_gateway_mcp::server::stdio(c, config)
                });
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

//! `msp-host`: the CLI. Parses arguments, sets up tracing and calls the library; nothing else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use msp_core::Mode;
use msp_host::audit::{AuditQuery, Decision};
use msp_host::vm::settings::{ProfileRef, StatusVersion};
use msp_host::{AdminClient, Host, HostConfig};
use tokio::signal::unix::{Signal, SignalKind, signal};

const AFTER_HELP: &str = "\
msp-host plays the three fabric endpoints for the VMs it is configured with:
  WireServer    168.63.129.16:80     secure-channel API (key status, key, attestation), goal state, telemetry
  HostGAPlugin  168.63.129.16:32526  /health, /vmSettings (protected like WireServer)
  IMDS          169.254.169.254:80   /metadata/instance, /metadata/versions, /metadata/identity/oauth2/token
A VM is identified by the source address of each connection (config: vms[].addresses). It latches one key per
VM; in Enforce mode every request not signed with that key gets 401 (default-closed). `--dev` serves loopback
addresses instead (WireServer 127.0.0.16:8080, HostGAPlugin 127.0.0.16:32526, IMDS 127.0.0.254:8080, admin
127.0.0.1:8787) with one VM `dev` for all of 127.0.0.0/8.

The vm, profile and audit commands talk to the admin API of a running host (loopback, bearer token read from
the token file, by default next to the store: <store dir>/admin.token).

Exit codes: 0 success; 1 the host failed to start or stopped with an error, or the admin API refused or could
not be reached; 2 invalid arguments.";

/// MSP host: WireServer, HostGAPlugin and IMDS with latched per-VM keys and default-closed enforcement.
#[derive(Parser)]
#[command(version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration comes from (also how CLI commands find the admin API).
#[derive(Args, Clone)]
struct ConfigArgs {
    /// JSON configuration file (every key optional; unknown keys are an error).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Loopback development profile; the store lives in --state-dir.
    #[arg(long, global = true)]
    dev: bool,
    /// State directory for --dev (default ./msp-host-dev).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Admin API address (overrides the configuration).
    #[arg(long, global = true)]
    admin: Option<SocketAddr>,
    /// Admin token file (overrides the configuration).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the host until SIGTERM or SIGINT.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// Log level filter (RUST_LOG syntax), default `info`.
        #[arg(long, default_value = "info")]
        log: String,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
    },
    /// Show or change a VM.
    Vm {
        #[command(subcommand)]
        command: VmCommand,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Manage access-control profiles (allowlists in the spec §4.1 item format).
    Profile {
        #[command(subcommand)]
        command: ProfileCommand,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Query the audit log (newest first).
    Audit {
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long)]
        vm: Option<String>,
        /// wireserver, hostga or imds.
        #[arg(long)]
        endpoint: Option<String>,
        /// allowed, unchecked, exempt, audited or rejected.
        #[arg(long)]
        decision: Option<String>,
        /// A reason code, e.g. SIG_MISMATCH.
        #[arg(long)]
        reason: Option<String>,
        /// Start: unix milliseconds, or a duration ago such as 90s, 15m, 2h, 1d.
        #[arg(long)]
        since: Option<String>,
        /// End (exclusive): unix milliseconds, or a duration ago.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum VmCommand {
    /// List every VM.
    List,
    /// Show a VM: settings, key facts, provisioning and the instance view.
    Show { name: String },
    /// Create a VM or replace its address blocks.
    Put {
        name: String,
        /// Address blocks, e.g. 10.0.0.4 or 10.0.0.0/24.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Change a VM's proxyAgentSettings; only the given options change.
    Set {
        name: String,
        #[arg(long)]
        enabled: Option<bool>,
        /// v1 or v2.
        #[arg(long)]
        status_version: Option<String>,
        /// WireServer (and HostGAPlugin) mode: disabled, audit or enforce.
        #[arg(long)]
        wireserver: Option<String>,
        /// IMDS mode: disabled, audit or enforce.
        #[arg(long)]
        imds: Option<String>,
        /// Profile for WireServer: NAME or NAME@VERSION; `none` detaches.
        #[arg(long)]
        wireserver_profile: Option<String>,
        #[arg(long)]
        imds_profile: Option<String>,
        #[arg(long)]
        hostga_profile: Option<String>,
    },
    /// Discard the VM's latched key and increment keyIncarnationId (spec §12.2).
    ResetKey { name: String },
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Store a new version of a profile from a JSON file.
    Put { name: String, file: PathBuf },
    /// Show every version of a profile.
    Show { name: String },
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Host(#[from] msp_host::HostError),
    #[error(transparent)]
    Config(#[from] msp_host::config::ConfigError),
    #[error(transparent)]
    Admin(#[from] msp_host::AdminError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    /// A local file (token, document) could not be read: exit 1.
    Token(String),
}

fn config_of(a: &ConfigArgs) -> Result<HostConfig, CliError> {
    let mut cfg = match (&a.config, a.dev) {
        (Some(path), _) => HostConfig::load(path)?,
        (None, true) => HostConfig::dev(
            a.state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("msp-host-dev")),
        ),
        (None, false) => HostConfig::default(),
    };
    if let Some(addr) = a.admin {
        cfg.admin_listen = addr;
    }
    if let Some(t) = &a.token_file {
        cfg.admin_token_file = Some(t.clone());
    }
    Ok(cfg)
}

fn admin_of(a: &ConfigArgs) -> Result<AdminClient, CliError> {
    let cfg = config_of(a)?;
    let token = match &cfg.admin_token {
        Some(t) => t.clone(),
        None => {
            let path = cfg.token_file();
            std::fs::read_to_string(&path)
                .map_err(|e| {
                    CliError::Token(format!(
                        "cannot read admin token file {}: {e}",
                        path.display()
                    ))
                })?
                .trim()
                .to_owned()
        }
    };
    Ok(AdminClient::new(cfg.admin_listen, token))
}

fn mode(s: &str, what: &str) -> Result<Mode, CliError> {
    Mode::parse(s)
        .ok_or_else(|| CliError::Usage(format!("{what}: {s:?} is not disabled, audit or enforce")))
}

fn profile_ref(s: &str) -> Result<Option<ProfileRef>, CliError> {
    if s == "none" {
        return Ok(None);
    }
    let (name, version) = match s.split_once('@') {
        Some((n, v)) => (
            n,
            Some(
                v.parse()
                    .map_err(|_| CliError::Usage(format!("{s:?}: version must be a number")))?,
            ),
        ),
        None => (s, None),
    };
    Ok(Some(ProfileRef {
        name: name.to_owned(),
        version,
    }))
}

/// Unix milliseconds, or a duration ago (`90s`, `15m`, `2h`, `1d`).
fn time_arg(s: &str) -> Result<u64, CliError> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || {
        CliError::Usage(format!(
            "{s:?} is neither unix milliseconds nor a duration like 15m"
        ))
    };
    let split = s.len().checked_sub(1).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Ok(u64::try_from(now)
        .unwrap_or(u64::MAX)
        .saturating_sub(secs * 1000))
}

fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("msp-host: cannot print: {e}"),
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run {
            config,
            log,
            json_logs,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_new(&log)
                .map_err(|e| CliError::Usage(format!("--log {log:?}: {e}")))?;
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_target(false);
            if json_logs {
                builder.json().init();
            } else {
                builder.init();
            }
            let cfg = config_of(&config)?;
            // Registered before the host serves, so a SIGTERM right after its start line is a graceful stop and
            // not the default action's kill.
            let stop = stop_signal();
            let host = Host::start(cfg).await?;
            stop.await;
            tracing::info!("shutting down");
            host.shutdown().await;
            Ok(())
        }
        Command::Vm { command, config } => {
            let admin = admin_of(&config)?;
            match command {
                VmCommand::List => print_json(&admin.vms().await?),
                VmCommand::Show { name } => print_json(&admin.vm_view(&name).await?),
                VmCommand::Put { name, addresses } => {
                    let a: Vec<&str> = addresses.iter().map(String::as_str).collect();
                    print_json(&admin.put_vm(&name, &a, None).await?);
                }
                VmCommand::Set {
                    name,
                    enabled,
                    status_version,
                    wireserver,
                    imds,
                    wireserver_profile,
                    imds_profile,
                    hostga_profile,
                } => {
                    let mut s = admin.vm_view(&name).await?.proxy_agent_settings;
                    if let Some(e) = enabled {
                        s.enabled = e;
                    }
                    if let Some(v) = status_version {
                        s.status_version = match v.as_str() {
                            "v1" => StatusVersion::V1,
                            "v2" => StatusVersion::V2,
                            _ => {
                                return Err(CliError::Usage(format!(
                                    "--status-version {v:?}: v1 or v2"
                                )));
                            }
                        };
                    }
                    if let Some(m) = wireserver {
                        s.wire_server.mode = mode(&m, "--wireserver")?;
                    }
                    if let Some(m) = imds {
                        s.imds.mode = mode(&m, "--imds")?;
                    }
                    if let Some(p) = wireserver_profile {
                        s.wire_server.profile = profile_ref(&p)?;
                    }
                    if let Some(p) = imds_profile {
                        s.imds.profile = profile_ref(&p)?;
                    }
                    if let Some(p) = hostga_profile {
                        s.host_ga.profile = profile_ref(&p)?;
                    }
                    print_json(&admin.put_settings(&name, &s).await?);
                }
                VmCommand::ResetKey { name } => {
                    let inc = admin.reset_key(&name).await?;
                    println!("{name}: key discarded, keyIncarnationId is now {inc}");
                }
            }
            Ok(())
        }
        Command::Profile { command, config } => {
            let admin = admin_of(&config)?;
            match command {
                ProfileCommand::Put { name, file } => {
                    let doc = std::fs::read_to_string(&file).map_err(|e| {
                        CliError::Token(format!("cannot read {}: {e}", file.display()))
                    })?;
                    let p = admin.put_profile(&name, &doc).await?;
                    println!("{}: stored version {}", p.name, p.version);
                }
                ProfileCommand::Show { name } => {
                    let r = admin
                        .call("GET", &format!("/v1/profiles/{name}"), None)
                        .await?;
                    if r.status != 200 {
                        return Err(msp_host::AdminError::Status {
                            status: r.status,
                            body: r.text(),
                        }
                        .into());
                    }
                    println!("{}", r.text());
                }
            }
            Ok(())
        }
        Command::Audit {
            config,
            vm,
            endpoint,
            decision,
            reason,
            since,
            until,
            limit,
        } => {
            let admin = admin_of(&config)?;
            let decision = match decision {
                Some(d) => Some(Decision::parse(&d).ok_or_else(|| {
                    CliError::Usage(format!(
                        "--decision {d:?}: allowed, unchecked, exempt, audited or rejected"
                    ))
                })?),
                None => None,
            };
            let q = AuditQuery {
                vm,
                endpoint,
                decision,
                reason,
                since_ms: since.as_deref().map(time_arg).transpose()?,
                until_ms: until.as_deref().map(time_arg).transpose()?,
                limit: Some(limit),
            };
            for r in admin.audit(&q).await? {
                println!(
                    "{} vm={} src={} {} {} {} mode={} {} status={} reason={}{}",
                    r.time_ms,
                    r.vm.as_deref().unwrap_or("-"),
                    r.source,
                    r.endpoint,
                    r.method,
                    r.path,
                    r.mode,
                    r.decision,
                    r.status,
                    r.reason.as_deref().unwrap_or("-"),
                    r.key_owner
                        .as_deref()
                        .map(|o| format!(" key-owner={o}"))
                        .unwrap_or_default(),
                );
            }
            Ok(())
        }
    }
}

/// Completes on SIGTERM or SIGINT. Both handlers are installed when this is called, not when the future is first
/// polled.
fn stop_signal() -> impl Future<Output = ()> {
    let install = |kind: SignalKind, name: &str| {
        signal(kind)
            .inspect_err(|e| tracing::warn!(signal = name, error = %e, "cannot handle the signal"))
            .ok()
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM");
    let mut interrupt = install(SignalKind::interrupt(), "SIGINT");
    async move {
        tokio::select! {
            () = received(term.as_mut()) => {}
            () = received(interrupt.as_mut()) => {}
        }
    }
}

async fn received(signal: Option<&mut Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Unblocks SIGTERM and SIGINT before any thread starts, so every thread inherits the unblocked mask. A parent may
/// start the host with them blocked (the mask survives `exec`); the host would then never see the stop it is sent,
/// and a supervisor's kill after its grace period would lose the audit records still waiting for their flush.
fn unblock_stop_signals() -> nix::Result<()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
    let stop: SigSet = [Signal::SIGTERM, Signal::SIGINT].into_iter().collect();
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&stop), None)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = unblock_stop_signals() {
        eprintln!("msp-host: cannot unblock SIGTERM and SIGINT: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("msp-host: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(m)) => {
            eprintln!("msp-host: {m}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("msp-host: {e}");
            ExitCode::FAILURE
        }
    }
}

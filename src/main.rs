//! The `gateway` binary: command line, logging, the async runtime, exit codes.
//! Exit codes: 0 success, 2 invalid config (nothing was started), 1 any other failure.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::events::model::now_micros;
use gateway::events::{archive, backup, Store, StoreError, StoreWriter};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "A TLS front door for web applications"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Ask a running gateway whether it is ready (its `/readyz`, on the metrics listener
    /// when configured, else the admin port): exit 0 when ready, 1 when not or unreachable,
    /// 2 when the config cannot be read. For container health checks.
    Health {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// Check the security posture of a config and its state on disk, with the controls each
    /// check supports (PCI DSS v4, SOC 2, ISO 27001:2022, HIPAA, GDPR) and a score per
    /// framework. Exit 1 when the overall score is below --min-score, 2 for a bad config.
    Posture {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// text or json
        #[arg(long, default_value = "text")]
        format: String,
        /// Fail (exit 1) below this overall score (0-100).
        #[arg(long, default_value_t = 0)]
        min_score: u32,
        /// Also open and check the newest backup in full.
        #[arg(long)]
        verify_backup: bool,
    },
    /// Validate a config file: exit 0 when valid, 2 with every error listed when not.
    Check {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Move expired events to archive files, or put an archive back.
    Archive {
        #[command(subcommand)]
        action: ArchiveAction,
    },
    /// Create, list, verify and restore backups of the event store, config and rules.
    Backup {
        #[command(subcommand)]
        action: BackupAction,
    },
    /// Replay the OWASP CRS regression suite (`<crs>/tests/*/*.yaml`, go-ftw format) through
    /// the compiled CRS at paranoia level 4, detection only; print the pass rate per rule
    /// family and `N passed, N failed`. Exit 1 when the pass rate is below `--min-pass-rate`.
    CrsTest {
        /// The CRS directory (crs-setup.conf[.example], rules/, tests/).
        #[arg(long, default_value = "../shared/crs")]
        crs: PathBuf,
        /// go-ftw override files (`test_overrides`), applied in order.
        #[arg(long = "overrides")]
        overrides: Vec<PathBuf>,
        /// Only the tests of this rule id.
        #[arg(long)]
        rule: Option<u32>,
        /// Do not list each failure.
        #[arg(long)]
        quiet: bool,
        #[arg(long, default_value_t = 0.0)]
        min_pass_rate: f64,
    },
    /// Write what the config implies for other systems.
    Export {
        #[command(subcommand)]
        what: ExportWhat,
    },
    /// The web application firewall's tools.
    Waf {
        #[command(subcommand)]
        action: WafAction,
    },
}

#[derive(Subcommand)]
enum ExportWhat {
    /// A Kubernetes NetworkPolicy (YAML) for the gateway's pod: ingress to the listener
    /// and metrics ports, egress to upstreams, alert webhooks and DNS.
    Networkpolicy {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        #[arg(long)]
        namespace: String,
        /// The policy's name.
        #[arg(long, default_value = "gateway")]
        name: String,
        /// The label selecting the gateway's pod, as key=value.
        #[arg(long, default_value = "app.kubernetes.io/name=gateway")]
        pod_label: String,
    },
}

#[derive(Subcommand)]
enum WafAction {
    /// Run raw HTTP/1.1 requests (files, or one from stdin) through the config's WAF and
    /// print one JSON line per request. Exit 0 when every request could be judged.
    Test {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        files: Vec<PathBuf>,
    },
    /// Replay labelled traffic (directories of raw requests, NDJSON captures) through the
    /// config's WAF and print blocked % per label, the totals, and every false positive
    /// with the rules behind it. Labels starting with `benign`, `legit`, `good` or `pass`
    /// are expected to pass; the rest to be blocked.
    Eval {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// `text` (a table) or `json`.
        #[arg(long, default_value = "text")]
        format: String,
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ArchiveAction {
    /// Archive every expired record now (through the running gateway if it has the store open).
    Run {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Put an archive file's records back into the store (checked in full first).
    Restore {
        file: PathBuf,
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// List the archives in the archive directory: files, date ranges, record counts.
    List {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum BackupAction {
    /// Write a backup now (through the running gateway if it has the store open).
    Create {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// List the backups in the backup directory, newest first.
    List {
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Check a backup in full: entries, checksums, the store copy (extracted into a
    /// temporary directory inside the data directory, removed afterwards).
    Verify {
        file: PathBuf,
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Restore a backup into a stopped gateway's data directory: store (every table),
    /// session key, and the config copy beside it for comparison.
    Restore {
        file: PathBuf,
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
}

fn posture(
    config: &std::path::Path,
    format: &str,
    min_score: u32,
    verify_backup: bool,
) -> ExitCode {
    if format != "text" && format != "json" {
        eprintln!("error: --format is text or json, not `{format}`");
        return ExitCode::from(2);
    }
    let rt = match gateway::app::compile_config(config) {
        Ok(rt) => rt,
        Err(errs) => {
            eprintln!("{errs}");
            return ExitCode::from(2);
        }
    };
    let report = gateway::posture::evaluate(&rt, None, verify_backup);
    if format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.text());
    }
    if report.overall < min_score {
        eprintln!(
            "posture score {} is below --min-score {min_score}",
            report.overall
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Turns transparent huge pages off for this process (unless `MIMALLOC_ALLOW_THP=1`).
///
/// mimalloc commits its arenas eagerly; where the kernel's THP mode is `always` (a common
/// distribution default) the first byte touched in a region faults in a whole 2 MiB page.
/// An idle keep-alive connection then holds 28 KiB instead of 15 (measured with a bare
/// hyper server: `benches/idle.py`), and RSS stays at its peak after a spike. The flag is
/// checked at fault time, so what is touched from here on comes in 4 KiB pages.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none_or(|v| v != "1") {
        // A failure (an old kernel) leaves THP as it was.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match gateway::check_config(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(errs) => {
                eprintln!("{errs}");
                eprintln!("{} error(s) in {}", errs.len(), config.display());
                ExitCode::from(2)
            }
        },
        Command::Run { config } => run(config),
        Command::Export {
            what:
                ExportWhat::Networkpolicy {
                    config,
                    namespace,
                    name,
                    pod_label,
                },
        } => {
            let Some(label) = pod_label.split_once('=') else {
                eprintln!("error: --pod-label is key=value, not `{pod_label}`");
                return ExitCode::from(2);
            };
            match gateway::check_config(&config) {
                Ok(loaded) => {
                    let policy =
                        gateway::network::network_policy(&loaded.raw, &namespace, &name, label);
                    match serde_yaml::to_string(&policy) {
                        Ok(y) => {
                            print!("{y}");
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("error: {e}");
                            ExitCode::from(1)
                        }
                    }
                }
                Err(errs) => {
                    eprintln!("{errs}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Posture {
            config,
            format,
            min_score,
            verify_backup,
        } => posture(&config, &format, min_score, verify_backup),
        Command::Health { config, timeout } => {
            use gateway::admin::health::{check, endpoint, HealthError};
            let result = endpoint(&config).and_then(|addr| {
                check(addr, std::time::Duration::from_secs(timeout)).map(|_| addr)
            });
            match result {
                Ok(addr) => {
                    println!("{addr}: ready");
                    ExitCode::SUCCESS
                }
                Err(e @ (HealthError::Config(_) | HealthError::NoEndpoint)) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Archive { action } => archive(action),
        Command::Backup { action } => backup(action),
        Command::Waf {
            action: WafAction::Test { config, files },
        } => waf_test(&config, &files),
        Command::Waf {
            action:
                WafAction::Eval {
                    config,
                    format,
                    inputs,
                },
        } => waf_eval(&config, &format, &inputs),
        Command::CrsTest {
            crs,
            overrides,
            rule,
            quiet,
            min_pass_rate,
        } => match gateway::waf::crs::ftw::run(&crs, &overrides, rule) {
            Ok(report) => {
                print!("{}", report.render(!quiet));
                if report.pass_rate() < min_pass_rate {
                    eprintln!(
                        "pass rate {:.2}% is below the floor {min_pass_rate}%",
                        report.pass_rate()
                    );
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn waf_test(config: &std::path::Path, files: &[PathBuf]) -> ExitCode {
    use gateway::waf::tester;
    let (rt, waf) = match settings_with_waf(config) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let mut inputs: Vec<(String, std::io::Result<Vec<u8>>)> = Vec::new();
    if files.is_empty() {
        let mut buf = Vec::new();
        let r = std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf);
        inputs.push(("-".to_string(), r));
    } else {
        for f in files {
            inputs.push((f.display().to_string(), std::fs::read(f)));
        }
    }
    let mut code = ExitCode::SUCCESS;
    for (name, bytes) in inputs {
        let parsed = bytes
            .map_err(|e| e.to_string())
            .and_then(|b| tester::parse_raw(&b));
        match parsed {
            Ok(raw) => println!("{}", tester::judge(&rt, &waf, &name, &raw)),
            Err(e) => {
                println!("{}", serde_json::json!({ "file": name, "error": e }));
                code = ExitCode::from(1);
            }
        }
    }
    code
}

fn waf_eval(config: &std::path::Path, format: &str, inputs: &[PathBuf]) -> ExitCode {
    use gateway::waf::eval;
    if !matches!(format, "text" | "json") {
        eprintln!("error: --format is `text` or `json`");
        return ExitCode::from(2);
    }
    let (rt, waf) = match settings_with_waf(config) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let samples = match eval::load(inputs) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if samples.is_empty() {
        return fail("no requests found in the inputs");
    }
    let report = eval::run(&rt, &waf, &samples);
    if format == "json" {
        print_json(&report);
    } else {
        print!("{}", report.render());
    }
    ExitCode::SUCCESS
}

/// The config's compiled settings and its WAF, or exit code 2 (errors, or no WAF rules).
fn settings_with_waf(
    config: &std::path::Path,
) -> Result<(gateway::runtime::Runtime, std::sync::Arc<gateway::waf::Waf>), ExitCode> {
    let rt = settings(config)?;
    let Some(waf) = rt.waf.clone() else {
        eprintln!(
            "error: {} configures no WAF rules (waf.rules)",
            config.display()
        );
        return Err(ExitCode::from(2));
    };
    Ok((rt, waf))
}

/// The config's compiled settings, or exit code 2 with its errors.
fn settings(config: &std::path::Path) -> Result<gateway::runtime::Runtime, ExitCode> {
    gateway::compile_config(config).map_err(|errs| {
        eprintln!("{errs}");
        eprintln!("{} error(s) in {}", errs.len(), config.display());
        ExitCode::from(2)
    })
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}

/// Records a `data_restored` event in the restored store (best effort: the restore itself
/// is done).
fn record_restore(rt: &gateway::runtime::Runtime, file: &std::path::Path) {
    use gateway::events::{AuditEvent, EventType};
    let Ok(Some(w)) = open_store(rt) else { return };
    let event = AuditEvent::new(EventType::DataRestored, "restored a backup")
        .detail("file", file.display().to_string());
    let record = gateway::events::sink::Record::Audit(event);
    if let Err(e) = w.write_batch(&[record], &mut Vec::new()) {
        eprintln!("warning: the restore is done, but recording it failed: {e}");
    }
}

/// Opens the store as its one writer; `Ok(None)` when a running gateway holds it.
fn open_store(rt: &gateway::runtime::Runtime) -> Result<Option<StoreWriter>, ExitCode> {
    match Store::open(&rt.events.store_path) {
        Ok(s) => Ok(std::sync::Arc::new(s).claim_writer()),
        Err(StoreError::Locked(_)) => Ok(None),
        Err(e) => Err(fail(e)),
    }
}

/// Asks the running gateway's admin API; prints its answer.
fn via_admin(
    rt: &gateway::runtime::Runtime,
    method: http::Method,
    path: &str,
    body: Option<String>,
) -> ExitCode {
    eprintln!("the gateway is running; asking it through the admin port");
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|r| {
            r.block_on(gateway::admin::client::call(
                &rt.admin,
                method,
                &format!("/api/v1{path}"),
                body,
            ))
        });
    match result {
        Ok((status, body)) if (200..300).contains(&status) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => fail(format!("admin API answered {status}: {body}")),
        Err(e) => fail(e),
    }
}

fn archive(action: ArchiveAction) -> ExitCode {
    init_cli_logging();
    match action {
        ArchiveAction::Run { config } => {
            let rt = match settings(&config) {
                Ok(rt) => rt,
                Err(c) => return c,
            };
            let store = match open_store(&rt) {
                Ok(Some(s)) => s,
                Ok(None) => return via_admin(&rt, http::Method::POST, "/archive/run", None),
                Err(c) => return c,
            };
            let mut reports = Vec::new();
            loop {
                match archive::archive_chunk(&store, &rt.events.retention, now_micros(), 50_000) {
                    Ok(Some(r)) => reports.push(r),
                    Ok(None) => break,
                    Err(e) => return fail(e),
                }
            }
            if let Err(e) = archive::prune_trends(&store, now_micros() / 1_000_000) {
                return fail(e);
            }
            print_json(&serde_json::json!({ "archives": reports }));
            ExitCode::SUCCESS
        }
        ArchiveAction::Restore { file, config } => {
            let rt = match settings(&config) {
                Ok(rt) => rt,
                Err(c) => return c,
            };
            let store = match open_store(&rt) {
                Ok(Some(s)) => s,
                Ok(None) => {
                    let in_dir = file.parent().and_then(|p| p.canonicalize().ok())
                        == rt.events.retention.archive_dir.canonicalize().ok();
                    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
                    return match name {
                        Some(name) if in_dir => via_admin(
                            &rt,
                            http::Method::POST,
                            "/archive/restore",
                            Some(serde_json::json!({ "file": name }).to_string()),
                        ),
                        _ => fail(format!(
                            "the gateway is running and {} is not in its archive directory {}; copy it there or stop the gateway",
                            file.display(),
                            rt.events.retention.archive_dir.display()
                        )),
                    };
                }
                Err(c) => return c,
            };
            match archive::restore(&store, &file, archive::RESTORE_HOLD) {
                Ok(r) => {
                    print_json(&r);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        ArchiveAction::List { config } => {
            let rt = match settings(&config) {
                Ok(rt) => rt,
                Err(c) => return c,
            };
            match archive::list(&rt.events.retention.archive_dir) {
                Ok(items) => {
                    print_json(&serde_json::json!({ "items": items }));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}

fn backup(action: BackupAction) -> ExitCode {
    init_cli_logging();
    match action {
        BackupAction::Create { config } => {
            let rt = match settings(&config) {
                Ok(rt) => rt,
                Err(c) => return c,
            };
            let store = match open_store(&rt) {
                Ok(Some(s)) => s,
                Ok(None) => return via_admin(&rt, http::Method::POST, "/backups", None),
                Err(c) => return c,
            };
            let b = &rt.events.backup;
            match backup::create(&store, &b.sources, &b.dir, b.retention) {
                Ok(info) => {
                    print_json(&info);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        BackupAction::List { config } => {
            let rt = match settings(&config) {
                Ok(rt) => rt,
                Err(c) => return c,
            };
            match backup::list(&rt.events.backup.dir) {
                Ok(files) => {
                    for f in files {
                        println!("{}\t{} bytes\t{}", f.path.display(), f.bytes, f.modified);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        BackupAction::Verify { file, config } => {
            let rt = match settings(&config) {
                Ok(rt) => rt,
                Err(c) => return c,
            };
            match backup::verify(&file, &rt.data_dir) {
                Ok(v) => {
                    print_json(&v);
                    eprintln!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        BackupAction::Restore { file, config } => {
            let rt = match settings(&config) {
                Ok(rt) => rt,
                Err(c) => return c,
            };
            let target = backup::RestoreTarget {
                store: rt.events.store_path.clone(),
                session_key: Some(rt.sessions.key_file.clone()),
            };
            match backup::restore(&file, &target) {
                Ok(r) => {
                    record_restore(&rt, &file);
                    print_json(&r);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("restore refused, nothing changed: {e}")),
            }
        }
    }
}

/// Diagnostics on stderr for the one-shot commands.
fn init_cli_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}

fn run(config: PathBuf) -> ExitCode {
    init_logging();
    // Validate before building the runtime, so a bad config binds nothing.
    let workers = match gateway::check_config(&config) {
        Ok(loaded) => loaded.raw.server.worker_threads,
        Err(errs) => {
            eprintln!("{errs}");
            eprintln!("{} error(s) in {}", errs.len(), config.display());
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if workers > 0 {
        builder.worker_threads(workers);
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        match gateway::Gateway::start(&config).await {
            Ok(gw) => {
                if gw.run_until_signal().await {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        }
    })
}

fn init_logging() {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    // Access log: JSON lines on stdout. Everything else: human-readable on stderr.
    // Both filters are static (by target and level), so tracing decides once per callsite:
    // the trace-level spans hyper and h2 open for every request and frame are never built.
    // (A closure filter would make every callsite "sometimes" and cost thousands of
    // instructions per request.)
    let access = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stdout)
        .with_filter(Targets::new().with_target("access", LevelFilter::INFO));
    let diagnostics_filter = EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("access=off".parse().expect("a valid directive"));
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(diagnostics_filter);
    tracing_subscriber::registry()
        .with(access)
        .with(diagnostics)
        .init();
}

//! The container image, built here offline: the Dockerfile's own rootfs script assembles the
//! file system around the statically linked binary cargo built, podman builds the
//! Dockerfile's own final stage from it, and the test runs it: HTTPS through it, the health
//! check, a non-root UID, the metrics-only listener, state in the volume, and no shell in
//! the image. Skipped, with the reason printed, where no container runtime can run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::*;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The statically linked release binary the Dockerfile builds (`.ci/run` builds it before
/// the tests; built here when missing).
fn static_binary() -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin = target_dir.join(TARGET).join("release/gateway");
    if !bin.exists() {
        ok(Command::new(env!("CARGO"))
            .current_dir(root())
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args(["build", "--release", "--locked", "--bin", "gateway"])
            .args(["--target", TARGET]));
    }
    bin
}

/// True when the ELF file has no program interpreter (no dynamic loader needed).
fn is_static_elf(path: &Path) -> bool {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF");
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    (0..count).all(|i| {
        let o = phoff + i * size;
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != PT_INTERP
    })
}

/// The Dockerfile's rootfs script: the `RUN set -eu;` instruction and its continuations.
fn rootfs_script(dockerfile: &str) -> String {
    let mut lines = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("RUN set -eu;"));
    let mut script = String::new();
    for l in lines.by_ref() {
        let (body, more) = match l.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (l, false),
        };
        script.push_str(body.strip_prefix("RUN ").unwrap_or(body));
        script.push(' ');
        if !more {
            break;
        }
    }
    assert!(
        script.contains("ROOTFS"),
        "no rootfs script in the Dockerfile"
    );
    script
}

/// The Dockerfile's final stage, copying the rootfs from the build context instead of the
/// build stage.
fn final_stage(dockerfile: &str) -> String {
    let stage: Vec<&str> = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("FROM scratch"))
        .collect();
    assert!(!stage.is_empty(), "the final stage is FROM scratch");
    let text = stage.join("\n");
    assert!(text.contains("COPY --from=build /rootfs/ /"), "{text}");
    text.replace("--from=build ", "")
        .replace(" /rootfs/", " rootfs/")
        .replace(" /state/", " state/")
}

/// Builds the image's file system in `dir/rootfs` (and its state directory in `dir/state`)
/// with the Dockerfile's own script.
pub fn assemble_rootfs(dir: &Path, binary: &Path) -> PathBuf {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(binary, src.join("gateway")).unwrap();
    std::fs::copy(root().join("gateway.toml"), src.join("gateway.toml")).unwrap();
    ok(Command::new("cp")
        .arg("-R")
        .arg(root().join("rules"))
        .arg(src.join("rules")));
    let rootfs = dir.join("rootfs");
    ok(Command::new("sh")
        .arg("-c")
        .arg(rootfs_script(&dockerfile))
        .env("SRC", &src)
        .env("ROOTFS", &rootfs)
        .env("STATE", dir.join("state")));
    rootfs
}

/// Extra `podman run` options this host needs, found by running a trivial container built
/// from `image`; `Err(reason)` when none works.
fn runtime_options(image: &str) -> Result<Vec<String>, String> {
    let hard = |flag: &str| {
        let out = run(Command::new("sh").arg("-c").arg(format!("ulimit -H{flag}")));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (nofile, nproc) = (hard("n"), hard("u"));
    let limits = |nofile: &str, nproc: &str| -> Vec<String> {
        vec![
            "--ulimit".into(),
            format!("nofile={nofile}:{nofile}"),
            "--ulimit".into(),
            format!("nproc={nproc}:{nproc}"),
        ]
    };
    let runc = |mut rest: Vec<String>| -> Vec<String> {
        let mut o = vec!["--runtime".to_string(), "runc".to_string()];
        o.append(&mut rest);
        o
    };
    // Sandboxes without CAP_SYS_RESOURCE cannot raise rlimits to podman's defaults, and
    // crun refuses hybrid cgroup hierarchies that runc accepts.
    let candidates: Vec<Vec<String>> = vec![
        vec![],
        limits(&nofile, &nproc),
        runc(limits(&nofile, &nproc)),
        runc(limits("4096", "4096")),
    ];
    let mut last = String::new();
    for opts in candidates {
        let (runtime, rest) = split_runtime(&opts);
        let out = run(Command::new("podman")
            .args(&runtime)
            .args(["run", "--rm"])
            .args(&rest)
            .args(["--entrypoint", "/usr/local/bin/gateway", image, "--version"]));
        if out.status.success() {
            return Ok(opts);
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    Err(format!(
        "no podman configuration can run a container here: {last}"
    ))
}

/// `--runtime X` is a global podman option; the rest go to `podman run`.
fn split_runtime(opts: &[String]) -> (Vec<String>, Vec<String>) {
    match opts.iter().position(|o| o == "--runtime") {
        Some(i) => (
            opts[i..i + 2].to_vec(),
            opts[..i].iter().chain(&opts[i + 2..]).cloned().collect(),
        ),
        None => (vec![], opts.to_vec()),
    }
}

/// Removes the container, its volumes and the image, whatever the test's outcome.
struct Cleanup {
    container: String,
    image: String,
    runtime: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(&self.runtime)
            .args(["rm", "-f", "-v", &self.container])
            .output();
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

fn host_port(container: &str, port: &str) -> std::net::SocketAddr {
    let out = ok(Command::new("podman").args(["port", container, port]));
    let line = out
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no port {port}"));
    line.trim().replace("0.0.0.0", "127.0.0.1").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scratch_image_serves_https_reports_health_and_holds_no_shell() {
    if run(Command::new("sh").arg("-c").arg("command -v podman"))
        .stdout
        .is_empty()
    {
        eprintln!("SKIPPED the container test: podman is not installed (.ci/run installs it)");
        return;
    }
    let binary = static_binary();
    assert!(
        is_static_elf(&binary),
        "{} is dynamically linked",
        binary.display()
    );
    let dir = tempfile::tempdir().unwrap();
    assemble_rootfs(dir.path(), &binary);
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    std::fs::write(dir.path().join("Containerfile"), final_stage(&dockerfile)).unwrap();
    let image = format!("localhost/gateway-test:{}", std::process::id());
    let name = format!("gateway-test-{}", std::process::id());
    let mut cleanup = Cleanup {
        container: name.clone(),
        image: image.clone(),
        runtime: vec![],
    };
    // `--format docker` keeps HEALTHCHECK (the OCI format has no field for it).
    ok(Command::new("podman")
        .args(["build", "--format", "docker", "--pull=never", "-t", &image])
        .arg("-f")
        .arg(dir.path().join("Containerfile"))
        .arg(dir.path()));
    let opts = match runtime_options(&image) {
        Ok(o) => o,
        Err(reason) => {
            eprintln!("SKIPPED the container test: {reason}");
            return;
        }
    };
    let (runtime, run_opts) = split_runtime(&opts);
    cleanup.runtime = runtime.clone();

    // The image: only the binary, config, rules, CA bundle and user database.
    let config = ok(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}|{{json .Config.Volumes}}|{{json .Config.ExposedPorts}}|{{json .Config.Healthcheck}}",
        &image,
    ]));
    let parts: Vec<&str> = config.splitn(4, '|').collect();
    assert_eq!(parts[0], "65532:65532", "{config}");
    assert!(parts[1].contains("/var/lib/gateway"), "{config}");
    for p in ["8443/tcp", "8080/tcp", "9090/tcp"] {
        assert!(parts[2].contains(p), "{config}");
    }
    assert!(parts[3].contains("health"), "{config}");

    ok(Command::new("podman")
        .args(&runtime)
        .args(["run", "-d", "--name", &name])
        .args(&run_opts)
        .args(["-p", "127.0.0.1::8443", "-p", "127.0.0.1::9090", &image]));
    let https = host_port(&name, "8443/tcp");
    let metrics = host_port(&name, "9090/tcp");

    // Ready: the image's own HEALTHCHECK command passes once the gateway has started.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(Command::new("podman")
            .args(&runtime)
            .args(["healthcheck", "run", &name]));
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never healthy: {} {}\nlogs: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&run(Command::new("podman").args(["logs", &name])).stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The process runs as 65532, not root.
    let pid = ok(Command::new("podman").args(&runtime).args([
        "inspect",
        "--format",
        "{{.State.Pid}}",
        &name,
    ]));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65532"),
        "{uid}"
    );

    // HTTPS through it, verified against the development CA it generated.
    ok(Command::new("podman")
        .args(["cp", &format!("{name}:/var/lib/gateway/certs/dev-ca.crt")])
        .arg(dir.path().join("dev-ca.crt")));
    let tls = TlsClient::new(&dir.path().join("dev-ca.crt"));
    let mut c = tls.h1(https).await;
    let r = c.get("/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The WAF is on in the shipped config.
    let r = c.get("/?q=1%27%20OR%20%271%27=%271").await;
    assert_eq!(r.status, 403, "{}", r.text());

    // The metrics-only listener serves metrics and health, and nothing of the API.
    let mut m = Sender::plain(metrics).await;
    let r = m.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("gateway_requests_total"), "{}", r.text());
    assert_eq!(m.get("/readyz").await.status, 200);
    assert_eq!(m.get("/api/v1/status").await.status, 404);

    // State is in the volume, owned by the gateway's user.
    let mounts = ok(Command::new("podman").args([
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Destination}}={{.Source}};{{end}}",
        &name,
    ]));
    let volume = mounts
        .split(';')
        .find_map(|m| m.strip_prefix("/var/lib/gateway="))
        .unwrap_or_else(|| panic!("no volume at /var/lib/gateway: {mounts}"));
    let store = Path::new(volume).join("events.redb");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&store).unwrap().uid(), 65532);

    // No shell to exec into, and nothing in the image but what it needs.
    let out = run(Command::new("podman")
        .args(&runtime)
        .args(["exec", &name, "/bin/sh", "-c", "true"]));
    assert!(!out.status.success(), "a shell ran in the image");
    let export = dir.path().join("fs.tar");
    ok(Command::new("podman")
        .args(["export", "-o"])
        .arg(&export)
        .arg(&name));
    let mut files = Vec::new();
    let mut ar = tar::Archive::new(std::fs::File::open(&export).unwrap());
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.header().entry_type().is_dir() {
            continue;
        }
        files.push(e.path().unwrap().to_string_lossy().into_owned());
    }
    for f in &files {
        let expected = f == "usr/local/bin/gateway"
            || f.starts_with("etc/gateway/")
            || f == "etc/ssl/certs/ca-certificates.crt"
            // passwd and group are the image's; the rest the runtime adds.
            || [
                "etc/passwd",
                "etc/group",
                "etc/mtab",
                "etc/hosts",
                "etc/hostname",
                "etc/resolv.conf",
            ]
            .contains(&f.as_str())
            || f.starts_with("run/");
        assert!(
            expected,
            "unexpected file in the image: {f} (all: {files:?})"
        );
    }
    assert!(!files
        .iter()
        .any(|f| f.ends_with("/sh") || f.contains("apt")));

    // A clean stop on SIGTERM.
    let stopped = run(Command::new("podman")
        .args(&runtime)
        .args(["stop", "-t", "20", &name]));
    assert!(stopped.status.success());
    let code =
        ok(Command::new("podman").args(["inspect", "--format", "{{.State.ExitCode}}", &name]));
    assert_eq!(code, "0");
    drop(cleanup);
}

//! Criterion benches for the event path: what `emit` costs the request path, and how many
//! events per second the writer thread commits into redb (durable commits, group-committed).
//! Run: `cargo bench --bench events`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use gateway::events::backup::{BackupSources, Retention};
use gateway::events::model::now_micros;
use gateway::events::{
    AuditEvent, BackupSchedule, EventId, EventSettings, EventType, Events, PerfEvent,
    RetentionPolicy, Severity,
};
use gateway::metrics::Metrics;

fn settings(dir: &std::path::Path, capacity: usize) -> EventSettings {
    EventSettings {
        store_path: dir.join("events.redb"),
        queue_capacity: capacity,
        batch_max_events: 2048,
        batch_max_delay: Duration::from_millis(20),
        retention: RetentionPolicy {
            audit: Duration::from_secs(730 * 86400),
            performance: Duration::from_secs(30 * 86400),
            schedule: gateway::schedule::Schedule::Every(Duration::from_secs(3600)),
            archive_dir: dir.join("archive"),
        },
        backup: BackupSchedule {
            schedule: None,
            retention: Retention {
                keep: 1,
                max_age: None,
            },
            dir: dir.join("backups"),
            sources: BackupSources {
                config_file: dir.join("gateway.toml"),
                rules_dir: dir.join("rules"),
                session_key: None,
                include_secrets: false,
            },
        },
    }
}

fn perf_event() -> PerfEvent {
    let time = now_micros();
    PerfEvent {
        id: EventId::new(time),
        time,
        route: "app".into(),
        method: "GET".into(),
        host: "shop.example.com".into(),
        path: "/api/v1/orders/12345".into(),
        status: 200,
        total_ms: 1234.5,
        upstream_ms: Some(1200.0),
        gateway_ms: 34.5,
        threshold_ms: 1000.0,
        severity: Severity::Warning,
        request_id: "0123456789abcdef0123456789abcdef".into(),
        client_ip: IpAddr::from([198, 51, 100, 7]),
    }
}

fn audit_event() -> AuditEvent {
    AuditEvent::new(EventType::IpBlocked, "address matched a deny rule")
        .ip(IpAddr::from([198, 51, 100, 7]))
        .path("/wp-login.php")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    // Large enough that a sample never fills the queue: this measures admission, not shedding.
    let events = Events::start(settings(dir.path(), 1 << 21), &metrics, None).unwrap();

    let mut g = c.benchmark_group("emit");
    g.measurement_time(Duration::from_secs(3)).sample_size(50);
    g.bench_function("audit, prepared event", |b| {
        b.iter_custom(|iters| {
            let prepared: Vec<AuditEvent> = (0..iters).map(|_| audit_event()).collect();
            let started = Instant::now();
            for e in prepared {
                events.sink.audit(e);
            }
            let t = started.elapsed();
            rt.block_on(events.flush()).unwrap();
            t
        })
    });
    g.bench_function("perf, built and emitted", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                events.sink.perf(perf_event());
            }
            let t = started.elapsed();
            rt.block_on(events.flush()).unwrap();
            t
        })
    });
    g.finish();

    // Sustained ingest: 100,000 records emitted at once, timed until all are committed.
    const N: u64 = 100_000;
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(N))
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    g.bench_function("perf records to redb, durable commits", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let before = metrics.events_committed.get();
                let started = Instant::now();
                for _ in 0..N {
                    events.sink.perf(perf_event());
                }
                rt.block_on(events.flush()).unwrap();
                total += started.elapsed();
                assert_eq!(
                    metrics.events_committed.get() - before,
                    N,
                    "records were shed"
                );
            }
            total
        })
    });
    g.finish();
    drop(events);
}

/// Backup, verify and restore of a store with `n` events (half audit, half performance),
/// timed once each: `BACKUP_EVENTS=1000000 cargo bench --bench events`.
fn backup_timing(n: u64) {
    use gateway::events::backup;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in(".").unwrap();
    std::fs::write(dir.path().join("gateway.toml"), "# bench\n").unwrap();
    let s = settings(dir.path(), 1 << 16);
    let metrics = Metrics::new();
    let events = Events::start(s.clone(), &metrics, None).unwrap();
    let started = Instant::now();
    for i in 0..n {
        // Varied addresses, paths and ids, so compression sees realistic records.
        let ip = IpAddr::from((0xc633_6400u32 + (i as u32 % 50_000)).to_be_bytes());
        if i % 2 == 0 {
            events.sink.audit(
                AuditEvent::new(EventType::IpBlocked, "address matched a deny rule")
                    .ip(ip)
                    .path(&format!("/catalog/{}/item-{}", i % 977, i)),
            );
        } else {
            let mut p = perf_event();
            p.client_ip = ip;
            p.path = format!("/api/v1/orders/{i}");
            p.request_id = format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            p.total_ms = 1000.0 + (i % 5000) as f64;
            events.sink.perf(p);
        }
        if i % 20_000 == 0 {
            rt.block_on(events.flush()).unwrap();
        }
    }
    rt.block_on(events.flush()).unwrap();
    let fill = started.elapsed();
    let committed = metrics.events_committed.get();
    assert_eq!(committed, n, "records were shed while filling");
    let store_bytes = std::fs::metadata(&s.store_path).unwrap().len();
    let info = events.backup_now().unwrap();
    drop(events);
    let v = backup::verify(&info.file, dir.path()).unwrap();
    let target = backup::RestoreTarget {
        store: dir.path().join("restored/events.redb"),
        session_key: None,
    };
    let r = backup::restore(&info.file, &target).unwrap();
    println!(
        "{n} events: fill {:.1}s, store {:.0} MiB; backup {:.1}s ({:.0} MiB .tar.zst); verify {:.1}s; restore {:.1}s ({} audit + {} performance)",
        fill.as_secs_f64(),
        store_bytes as f64 / 1048576.0,
        info.seconds,
        info.bytes as f64 / 1048576.0,
        v.seconds,
        r.seconds,
        r.audit_events,
        r.performance_events,
    );
}

criterion_group!(benches, bench);

fn main() {
    if let Some(n) = std::env::var("BACKUP_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        backup_timing(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

//! The writer thread: it holds the store's one [`StoreWriter`], so it is the only code
//! that writes the event store while the gateway runs.
//!
//! It takes records from the queue and group-commits them: a write transaction (durable,
//! `Durability::Immediate`) per `batch_max_events` records or per `batch_max_delay` after
//! the first record of a batch, whichever comes first. A record counts as committed (in
//! `gateway_events_committed_total`) only after its transaction's commit returned, so
//! after a crash every counted record is in the store. Operator commands (investigation
//! changes, archive runs, flushes) come through the same queue and run between batches,
//! after the records queued before them are committed. Once a minute it closes the trend
//! buckets; at each run of `retention`'s schedule it archives expired records in chunks, between
//! which it keeps committing new events. On stop it commits everything queued and the
//! partial trend minute.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::sync::oneshot;

use super::archive::{self, ArchiveReport, RestoreReport};
use super::model::{now_micros, AuditEvent, EventId, EventType, Investigation, Patch};
use super::sink::{QueueState, Record};
use super::store::{PatchOutcome, StoreError, StoreWriter};
use super::trends::{Trends, MINUTE};
use super::EventSettings;
use crate::metrics::{Metrics, Task, TaskMetrics};
use crate::schedule::{until, Job, Schedule};

/// Records per archive file (and per delete transaction).
const ARCHIVE_CHUNK: usize = 50_000;
/// Attempts to commit one batch before its records are given up (and counted as dropped).
const COMMIT_ATTEMPTS: u32 = 5;

pub(crate) enum Msg {
    Record(Record),
    Command(Command),
}

pub(crate) enum Command {
    Patch {
        id: EventId,
        patch: Patch,
        reply: oneshot::Sender<Result<Investigation, PatchOutcome>>,
    },
    /// Answered once every record queued before it is committed.
    Flush(oneshot::Sender<()>),
    Archive(oneshot::Sender<Result<Vec<ArchiveReport>, StoreError>>),
    Restore(
        std::path::PathBuf,
        oneshot::Sender<Result<RestoreReport, StoreError>>,
    ),
    /// Any other write (IP rules, bans), run on the writer thread between batches.
    Run(Box<dyn FnOnce(&StoreWriter) + Send>),
    Stop,
}

struct WriterMetrics {
    committed: IntCounter,
    commit_seconds: Histogram,
    queue_depth: IntGauge,
    write_errors: IntCounter,
    lost: [IntCounter; 4],
}

pub(crate) struct Writer {
    store: StoreWriter,
    rx: Receiver<Msg>,
    state: Arc<QueueState>,
    settings: Arc<ArcSwap<EventSettings>>,
    trends: Arc<Trends>,
    metrics: WriterMetrics,
    tasks: TaskMetrics,
    /// Offered every audit event once its batch is committed (or given up).
    alerts: Option<Arc<crate::alerts::Alerts>>,
    /// Where the archive job publishes its next run.
    next_runs: Arc<crate::schedule::NextRuns>,
    /// When the writer was made, and the first archive run after it (published before
    /// the thread starts, so the status never shows none).
    started: SystemTime,
    first_archive: SystemTime,
}

/// One archive run's totals so far (a run spans several chunks).
#[derive(Default)]
struct ArchiveRun {
    started: Option<Instant>,
    bytes: u64,
    records: u64,
}

impl ArchiveRun {
    fn add(&mut self, r: &ArchiveReport) {
        self.started.get_or_insert_with(Instant::now);
        self.bytes += r.bytes;
        self.records += r.audit + r.performance;
    }
}

impl Writer {
    pub fn new(
        store: StoreWriter,
        rx: Receiver<Msg>,
        state: Arc<QueueState>,
        settings: Arc<ArcSwap<EventSettings>>,
        metrics: &Metrics,
        alerts: Option<Arc<crate::alerts::Alerts>>,
        next_runs: Arc<crate::schedule::NextRuns>,
    ) -> Writer {
        let started = SystemTime::now();
        // An interval schedule first runs a minute after the start (a store left behind
        // by a long stop is trimmed soon); a cron schedule at its next time.
        let first_archive = match &settings.load().retention.schedule {
            Schedule::Every(d) => started + (*d).min(Duration::from_secs(60)),
            s => next_run(s, started),
        };
        next_runs.set(Job::Archive, Some(first_archive));
        Writer {
            alerts,
            next_runs,
            started,
            first_archive,
            store,
            rx,
            state,
            settings,
            trends: metrics.trends.clone(),
            tasks: metrics.tasks.clone(),
            metrics: WriterMetrics {
                committed: metrics.events_committed.clone(),
                commit_seconds: metrics.events_commit_duration.clone(),
                queue_depth: metrics.events_queue_depth.clone(),
                write_errors: metrics.events_write_errors.clone(),
                lost: super::model::Risk::ALL
                    .map(|r| metrics.events_dropped.with_label_values(&[r.as_str()])),
            },
        }
    }

    pub fn run(self) {
        let mut batch: Vec<Record> = Vec::new();
        let mut cmds: Vec<Command> = Vec::new();
        let mut buf = Vec::with_capacity(1024);
        let mut stop = false;
        let mut next_roll = next_minute_boundary();
        let mut archiving = false;
        let mut run = ArchiveRun::default();
        let mut last_archive = self.started;
        let mut seen = self.settings.load_full();
        let mut next_archive = self.first_archive;
        loop {
            let s = self.settings.load_full();
            if !Arc::ptr_eq(&s, &seen) {
                // Reloaded; with another schedule, the next run follows it.
                if s.retention.schedule != seen.retention.schedule {
                    next_archive = next_run(&s.retention.schedule, last_archive);
                    self.next_runs.set(Job::Archive, Some(next_archive));
                }
                seen = s.clone();
            }
            let wake = if archiving {
                Instant::now()
            } else {
                next_roll.min(Instant::now() + until(next_archive, SystemTime::now()))
            };
            match self
                .rx
                .recv_timeout(wake.saturating_duration_since(Instant::now()))
            {
                Ok(m) => self.take(m, &mut batch, &mut cmds),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stop = true,
            }
            if !batch.is_empty() && cmds.is_empty() && !stop {
                let deadline = Instant::now() + s.batch_max_delay;
                while batch.len() < s.batch_max_events && cmds.is_empty() {
                    match self
                        .rx
                        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    {
                        Ok(m) => self.take(m, &mut batch, &mut cmds),
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            stop = true;
                            break;
                        }
                    }
                }
            }
            self.commit(&mut batch, &mut buf);
            // A command may take more messages off the queue (an archive run keeps ingesting
            // between chunks); commands among them join the end of this list.
            while !cmds.is_empty() {
                let c = cmds.remove(0);
                match c {
                    Command::Stop => stop = true,
                    other => self.command(other, &mut batch, &mut buf, &mut cmds),
                }
            }
            if stop {
                // Everything queued before the stop (records and writes such as bans), then
                // the partial trend minute.
                while let Ok(m) = self.rx.try_recv() {
                    self.take(m, &mut batch, &mut cmds);
                    if batch.len() >= s.batch_max_events {
                        self.commit(&mut batch, &mut buf);
                    }
                }
                self.commit(&mut batch, &mut buf);
                for c in cmds.drain(..) {
                    if let Command::Run(f) = c {
                        f(&self.store);
                    }
                }
                self.roll_trends(current_minute());
                return;
            }
            let now = Instant::now();
            if now >= next_roll {
                self.roll_trends(current_minute() - MINUTE);
                next_roll = next_minute_boundary();
            }
            if archiving || SystemTime::now() >= next_archive {
                run.started.get_or_insert_with(Instant::now);
                match self.archive_once(&s, &mut batch) {
                    Ok(Some(r)) => {
                        run.add(&r);
                        archiving = true;
                    }
                    Ok(None) => {
                        self.archive_succeeded(&std::mem::take(&mut run));
                        archiving = false;
                    }
                    Err(e) => {
                        std::mem::take(&mut run);
                        self.archive_failed(&e, &mut batch);
                        archiving = false;
                    }
                }
                if !archiving {
                    last_archive = SystemTime::now();
                    next_archive = next_run(&s.retention.schedule, last_archive);
                    self.next_runs.set(Job::Archive, Some(next_archive));
                }
            }
        }
    }

    fn take(&self, m: Msg, batch: &mut Vec<Record>, cmds: &mut Vec<Command>) {
        self.state.depth.fetch_sub(1, Ordering::AcqRel);
        match m {
            Msg::Record(r) => batch.push(r),
            Msg::Command(c) => cmds.push(c),
        }
    }

    /// Offers the batch's audit events to the alert webhooks.
    fn alert(&self, batch: &[Record]) {
        if let Some(alerts) = &self.alerts {
            for r in batch {
                if let Record::Audit(e) = r {
                    alerts.offer(e);
                }
            }
        }
    }

    fn commit(&self, batch: &mut Vec<Record>, buf: &mut Vec<u8>) {
        batch.extend(self.state.take_overflow());
        self.metrics
            .queue_depth
            .set(self.state.depth.load(Ordering::Relaxed) as i64);
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        for attempt in 1..=COMMIT_ATTEMPTS {
            match self.store.write_batch(batch, buf) {
                Ok(()) => {
                    self.metrics
                        .commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    self.metrics.committed.inc_by(batch.len() as u64);
                    self.alert(batch);
                    batch.clear();
                    return;
                }
                Err(e) => {
                    self.metrics.write_errors.inc();
                    tracing::error!(error = %e, attempt, records = batch.len(), "event store write failed");
                    std::thread::sleep(Duration::from_millis(100 * attempt as u64));
                }
            }
        }
        // Not stored, but an alert still goes out: that is when someone should look.
        self.alert(batch);
        for r in batch.drain(..) {
            let risk = match &r {
                Record::Audit(e) => e.risk,
                Record::Perf(_) => super::model::Risk::Low,
            };
            if let Record::Audit(e) = &r {
                if risk == super::model::Risk::Critical {
                    tracing::error!(target: "events", event = %serde_json::to_string(e).unwrap_or_default(), "critical event not stored");
                }
            }
            self.metrics.lost[risk as usize].inc();
        }
    }

    fn command(
        &self,
        c: Command,
        batch: &mut Vec<Record>,
        buf: &mut Vec<u8>,
        later: &mut Vec<Command>,
    ) {
        match c {
            Command::Patch { id, patch, reply } => {
                let _ = reply.send(self.store.patch(id, &patch));
            }
            Command::Flush(reply) => {
                let _ = reply.send(());
            }
            Command::Archive(reply) => {
                let s = self.settings.load_full();
                let mut reports = Vec::new();
                let mut run = ArchiveRun {
                    started: Some(Instant::now()),
                    ..Default::default()
                };
                let result = loop {
                    match archive::archive_chunk(
                        &self.store,
                        &s.retention,
                        now_micros(),
                        ARCHIVE_CHUNK,
                    ) {
                        Ok(Some(r)) => {
                            batch.push(Record::Audit(archived_event(&r)));
                            run.add(&r);
                            reports.push(r);
                            // Keep up with new events between chunks; commands wait.
                            while let Ok(m) = self.rx.try_recv() {
                                self.take(m, batch, later);
                            }
                            self.commit(batch, buf);
                        }
                        Ok(None) => break Ok(reports),
                        Err(e) => break Err(e),
                    }
                };
                let _ = archive::prune_trends(&self.store, now_micros() / 1_000_000);
                match &result {
                    Ok(_) => self.archive_succeeded(&run),
                    Err(e) => self.archive_failed(e, batch),
                }
                let _ = reply.send(result);
            }
            Command::Restore(path, reply) => {
                let r = archive::restore(&self.store, &path, archive::RESTORE_HOLD);
                if let Ok(rep) = &r {
                    batch.push(Record::Audit(
                        AuditEvent::new(
                            EventType::DataRestored,
                            format!("restored {} records from an archive", rep.restored),
                        )
                        .detail("file", path.display().to_string()),
                    ));
                }
                let _ = reply.send(r);
            }
            Command::Run(f) => f(&self.store),
            Command::Stop => {}
        }
    }

    /// Archives one chunk; `None` when nothing more has expired.
    fn archive_once(
        &self,
        s: &EventSettings,
        batch: &mut Vec<Record>,
    ) -> Result<Option<ArchiveReport>, StoreError> {
        match archive::archive_chunk(&self.store, &s.retention, now_micros(), ARCHIVE_CHUNK)? {
            Some(r) => {
                batch.push(Record::Audit(archived_event(&r)));
                Ok(Some(r))
            }
            None => {
                archive::prune_trends(&self.store, now_micros() / 1_000_000)?;
                Ok(None)
            }
        }
    }

    fn archive_succeeded(&self, run: &ArchiveRun) {
        let seconds = run.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.tasks
            .succeeded(Task::Archive, seconds, run.bytes, run.records);
    }

    /// Counts the failure and records an `archive_failed` event (committed with the next
    /// batch).
    fn archive_failed(&self, e: &StoreError, batch: &mut Vec<Record>) {
        tracing::error!(error = %e, "archiving expired events failed");
        self.tasks.failed(Task::Archive);
        batch.push(Record::Audit(AuditEvent::new(
            EventType::ArchiveFailed,
            format!("archiving expired events failed: {e}"),
        )));
    }

    fn roll_trends(&self, minute_start: u64) {
        let closed = self.trends.roll(minute_start);
        if closed.is_empty() {
            return;
        }
        if let Err(e) = archive::persist_trends(&self.store, &closed) {
            tracing::error!(error = %e, "persisting latency trends failed");
        }
    }
}

fn archived_event(r: &ArchiveReport) -> AuditEvent {
    AuditEvent::new(
        EventType::DataArchived,
        format!(
            "archived {} audit and {} performance records",
            r.audit, r.performance
        ),
    )
    .detail("file", r.file.display().to_string())
    .detail("sha256", r.sha256.clone())
}

fn current_minute() -> u64 {
    let s = now_micros() / 1_000_000;
    s - s % MINUTE
}

fn next_minute_boundary() -> Instant {
    let micros = now_micros();
    let into = micros % (MINUTE * 1_000_000);
    Instant::now() + Duration::from_micros(MINUTE * 1_000_000 - into)
}

/// The next run of `schedule` after `last` (an hour later should the expression have no
/// next date, which config validation rules out).
fn next_run(schedule: &Schedule, last: SystemTime) -> SystemTime {
    schedule
        .next_after(last)
        .unwrap_or(last + Duration::from_secs(3600))
}

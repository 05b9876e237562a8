//! Events: everything the gateway decides, kept in an embedded store an operator can query.
//!
//! - [`model`]: event ids, types, the risk table, audit and performance records, the
//!   investigation workflow.
//! - [`sink`]: the request path's non-blocking `emit` into a bounded queue.
//! - [`writer`]: the one thread that writes the store, group-committing batches.
//! - [`schema`]: every table of the store file, in one list.
//! - [`store`]: the redb file, its queries, and the one [`store::StoreWriter`].
//! - [`trends`]: per-route latency buckets (minute and hour).
//! - [`archive`]: retention (expired records to zstd NDJSON files) and restore.
//! - [`backup`]: consistent backups with checksums, verify and restore.
//!
//! Cost on the request path: building the record plus one `try_send` (see
//! `benches/events.rs`). Memory: at most `events.queue_capacity` queued records. Failure
//! modes: a full queue sheds low-risk records first (counted in `/metrics`); a failing disk
//! is retried, then its batch is counted as dropped and critical events are written to the
//! error log. The request path never waits for the disk.

pub mod archive;
pub mod backup;
pub mod files;
pub mod model;
pub mod sampler;
pub mod schema;
pub mod sink;
pub mod store;
pub mod trends;
mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

pub use archive::{ArchiveReport, RestoreReport, RetentionPolicy};
pub use model::{AuditEvent, EventId, EventType, PerfEvent, Risk, Severity, Status};
pub use sink::EventSink;
pub use store::{Store, StoreError, StoreWriter};

use crate::metrics::{Metrics, Task, TaskMetrics};
use model::{Investigation, Patch};
use store::PatchOutcome;
use writer::{Command, Writer};

/// The `[events]` settings in force.
#[derive(Debug, Clone)]
pub struct EventSettings {
    pub store_path: PathBuf,
    pub queue_capacity: usize,
    pub batch_max_events: usize,
    pub batch_max_delay: Duration,
    pub retention: RetentionPolicy,
    pub backup: BackupSchedule,
}

/// Scheduled backups.
#[derive(Debug, Clone)]
pub struct BackupSchedule {
    /// `None`: only on demand.
    pub schedule: Option<crate::schedule::Schedule>,
    pub retention: backup::Retention,
    pub dir: PathBuf,
    pub sources: backup::BackupSources,
}

/// Why an operator command could not run.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the event writer is busy; try again")]
    Busy,
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The running event subsystem: the sink, the store for reads, the writer thread.
pub struct Events {
    pub sink: Arc<EventSink>,
    pub store: Arc<Store>,
    settings: Arc<ArcSwap<EventSettings>>,
    tasks: TaskMetrics,
    /// One backup at a time (scheduled and on demand would otherwise copy twice).
    backup_running: Mutex<()>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// When the archive and backup jobs run next (for `/api/v1/status`).
    pub next_runs: Arc<crate::schedule::NextRuns>,
}

impl Events {
    /// Opens the store, loads the kept trend buckets and starts the writer thread.
    /// `alerts`: the webhooks every committed event is offered to.
    pub fn start(
        settings: EventSettings,
        metrics: &Metrics,
        alerts: Option<Arc<crate::alerts::Alerts>>,
    ) -> Result<Events, StoreError> {
        let store = Arc::new(Store::open(&settings.store_path)?);
        let loaded =
            archive::load_trends(&store, &metrics.trends, model::now_micros() / 1_000_000)?;
        tracing::debug!(buckets = loaded, "latency trends loaded");
        let (tx, rx) = std::sync::mpsc::sync_channel(settings.queue_capacity);
        let state = Arc::new(sink::QueueState::new());
        let sink = Arc::new(EventSink::new(
            tx,
            state.clone(),
            settings.queue_capacity,
            metrics,
        ));
        let capacity = settings.queue_capacity;
        let settings = Arc::new(ArcSwap::from_pointee(settings));
        let writer = store
            .claim_writer()
            .ok_or_else(|| StoreError::Invalid("the event store already has a writer".into()))?;
        let next_runs = Arc::new(crate::schedule::NextRuns::default());
        let w = Writer::new(
            writer,
            rx,
            state,
            settings.clone(),
            metrics,
            alerts,
            next_runs.clone(),
        );
        let handle = std::thread::Builder::new()
            .name("event-writer".into())
            .spawn(move || w.run())
            .map_err(StoreError::io("starting the event writer thread"))?;
        tracing::debug!(capacity, "event writer started");
        Ok(Events {
            sink,
            store,
            settings,
            tasks: metrics.tasks.clone(),
            backup_running: Mutex::new(()),
            writer: Mutex::new(Some(handle)),
            next_runs,
        })
    }

    /// Puts reloaded settings in force (batching, retention, backups; the queue capacity
    /// and the store path need a restart).
    pub fn update(&self, settings: EventSettings) {
        self.settings.store(Arc::new(settings));
    }

    pub fn settings(&self) -> Arc<EventSettings> {
        self.settings.load_full()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        if !self.sink.command(make(tx)) {
            return Err(CommandError::Busy);
        }
        rx.await.map_err(|_| CommandError::Busy)
    }

    /// Runs `f` on the writer thread (the one place that writes the store).
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StoreWriter) -> T + Send + 'static,
    ) -> Result<T, CommandError> {
        let (tx, rx) = oneshot::channel();
        let run = Box::new(move |s: &StoreWriter| {
            let _ = tx.send(f(s));
        });
        if !self.sink.command(Command::Run(run)) {
            return Err(CommandError::Busy);
        }
        rx.await.map_err(|_| CommandError::Busy)
    }

    /// Queues `f` for the writer thread without waiting (from the request path). False when
    /// the queue is full: the write is logged and dropped.
    pub fn write_detached(&self, f: impl FnOnce(&StoreWriter) + Send + 'static) -> bool {
        let sent = self.sink.command(Command::Run(Box::new(f)));
        if !sent {
            tracing::error!("event queue full: a store write (ban or rule) was not queued");
        }
        sent
    }

    /// Waits until every record queued before this call is committed.
    pub async fn flush(&self) -> Result<(), CommandError> {
        self.ask(Command::Flush).await
    }

    /// Applies an operator's change to an investigation.
    pub async fn patch(&self, id: EventId, patch: Patch) -> Result<Investigation, PatchOutcome> {
        self.ask(|reply| Command::Patch { id, patch, reply })
            .await
            .map_err(|_| PatchOutcome::Busy)?
    }

    /// Archives every expired record now.
    pub async fn archive_now(&self) -> Result<Vec<ArchiveReport>, CommandError> {
        Ok(self.ask(Command::Archive).await??)
    }

    /// Restores an archive file into the running store.
    pub async fn restore_archive(&self, file: PathBuf) -> Result<RestoreReport, CommandError> {
        Ok(self.ask(|r| Command::Restore(file, r)).await??)
    }

    /// Writes a backup now (from a read transaction; the writer keeps going). A failure
    /// is a `backup_failed` event and counts in `gateway_task_failures_total`.
    pub fn backup_now(&self) -> Result<backup::BackupInfo, StoreError> {
        let _one_at_a_time = self
            .backup_running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let s = self.settings();
        match backup::create(
            &self.store,
            &s.backup.sources,
            &s.backup.dir,
            s.backup.retention,
        ) {
            Ok(info) => {
                let records = info.manifest.tables.iter().map(|t| t.rows).sum();
                self.tasks
                    .succeeded(Task::Backup, info.seconds, info.bytes, records);
                self.sink.audit(
                    AuditEvent::new(EventType::BackupCreated, "backup created")
                        .detail("file", info.file.display().to_string())
                        .detail("bytes", info.bytes.to_string()),
                );
                Ok(info)
            }
            Err(e) => {
                self.tasks.failed(Task::Backup);
                tracing::error!(error = %e, "backup failed");
                self.sink.audit(
                    AuditEvent::new(EventType::BackupFailed, format!("backup failed: {e}"))
                        .detail("dir", s.backup.dir.display().to_string()),
                );
                Err(e)
            }
        }
    }

    /// Checks a backup in the backup directory, by file name only.
    pub fn verify_backup(&self, name: &str) -> Result<backup::Verified, StoreError> {
        let s = self.settings();
        if !backup::is_backup_name(name) {
            return Err(StoreError::Invalid(format!(
                "`{name}` is not a backup file name (backup-….tar.zst)"
            )));
        }
        let data_dir = s
            .store_path
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        backup::verify(&s.backup.dir.join(name), &data_dir)
    }

    /// Commits everything queued, persists the partial trend minute and stops the writer.
    /// Blocks; call from a blocking context.
    pub fn stop(&self) {
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(handle) = handle else { return };
        // Wait for room: a stop must not be lost to a full queue.
        while !self.sink.command_blocking(Command::Stop) {
            if handle.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = handle.join();
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.stop();
    }
}

//! The request path's side of the event store: [`EventSink::audit`] and
//! [`EventSink::perf`] put a record into a bounded queue with one `try_send` and return; they
//! never block and never touch the disk.
//!
//! Shedding when the writer falls behind: the queue admits low-risk records (and
//! performance records) only while it is under 60 % full, medium-risk under 80 %, high and
//! critical up to its capacity. Every refused record is counted in
//! `gateway_events_dropped_total{risk}`. A critical event that finds the queue full goes to
//! a small overflow list the writer drains next; only when that is full too is it dropped,
//! and then it is written whole to the error log, never silently.
//!
//! Cost: an atomic add and a `try_send` on a std bounded channel (no allocation beyond the
//! record itself). Memory: at most `capacity` records queued.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use prometheus::IntCounter;

use super::model::{AuditEvent, PerfEvent, Risk};
use super::writer::{Command, Msg};
use crate::metrics::Metrics;

/// Most critical events kept aside when the queue is full.
const OVERFLOW_CAPACITY: usize = 4096;

/// A record on its way to the store.
#[derive(Debug, Clone)]
pub enum Record {
    Audit(AuditEvent),
    Perf(PerfEvent),
}

/// Shared between the sink and the writer: how many messages are queued, and the critical
/// events that did not fit.
pub(crate) struct QueueState {
    pub depth: AtomicUsize,
    pub overflow: Mutex<Vec<Record>>,
    pub overflowed: AtomicUsize,
}

impl QueueState {
    pub fn new() -> QueueState {
        QueueState {
            depth: AtomicUsize::new(0),
            overflow: Mutex::new(Vec::new()),
            overflowed: AtomicUsize::new(0),
        }
    }

    /// Takes the critical events set aside (cheap when there are none).
    pub fn take_overflow(&self) -> Vec<Record> {
        if self.overflowed.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let mut o = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
        self.overflowed.store(0, Ordering::Release);
        std::mem::take(&mut *o)
    }
}

/// Counters resolved once, so the request path increments through a pointer.
struct SinkCounters {
    emitted_audit: IntCounter,
    emitted_perf: IntCounter,
    dropped: [IntCounter; 4],
}

/// Where the request path sends events. Cloning is not needed: share it behind an `Arc`.
pub struct EventSink {
    tx: SyncSender<Msg>,
    state: Arc<QueueState>,
    /// Admission limits by risk (index: `Risk as usize`).
    limits: [usize; 4],
    counters: SinkCounters,
}

impl EventSink {
    pub(crate) fn new(
        tx: SyncSender<Msg>,
        state: Arc<QueueState>,
        capacity: usize,
        metrics: &Metrics,
    ) -> EventSink {
        let dropped = |r: Risk| metrics.events_dropped.with_label_values(&[r.as_str()]);
        EventSink {
            tx,
            state,
            limits: [capacity * 6 / 10, capacity * 8 / 10, capacity, capacity],
            counters: SinkCounters {
                emitted_audit: metrics.events_emitted.with_label_values(&["audit"]),
                emitted_perf: metrics.events_emitted.with_label_values(&["performance"]),
                dropped: Risk::ALL.map(dropped),
            },
        }
    }

    /// Queues an audit event. Never blocks.
    pub fn audit(&self, event: AuditEvent) {
        let risk = event.risk;
        tracing::debug!(target: "events", kind = event.kind.as_str(), risk = risk.as_str(), "event");
        self.counters.emitted_audit.inc();
        self.offer(Record::Audit(event), risk);
    }

    /// Queues a performance record (shed first, like a low-risk event). Never blocks.
    pub fn perf(&self, event: PerfEvent) {
        self.counters.emitted_perf.inc();
        self.offer(Record::Perf(event), Risk::Low);
    }

    fn offer(&self, record: Record, risk: Risk) {
        let limit = self.limits[risk as usize];
        let depth = self.state.depth.fetch_add(1, Ordering::AcqRel);
        let refused = if depth >= limit {
            Some(Msg::Record(record))
        } else {
            match self.tx.try_send(Msg::Record(record)) {
                Ok(()) => None,
                Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => Some(m),
            }
        };
        let Some(Msg::Record(record)) = refused else {
            return;
        };
        self.state.depth.fetch_sub(1, Ordering::AcqRel);
        if risk == Risk::Critical {
            let mut o = self
                .state
                .overflow
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if o.len() < OVERFLOW_CAPACITY {
                o.push(record);
                self.state.overflowed.fetch_add(1, Ordering::Release);
                return;
            }
            drop(o);
            if let Record::Audit(e) = &record {
                tracing::error!(
                    target: "events",
                    event = %serde_json::to_string(e).unwrap_or_default(),
                    "event queue and overflow full: critical event not stored"
                );
            }
        }
        self.counters.dropped[risk as usize].inc();
    }

    /// Sends a command to the writer; false when the queue is full or the writer stopped
    /// (the command's reply channel then closes unanswered).
    pub(crate) fn command(&self, cmd: Command) -> bool {
        let depth = self.state.depth.fetch_add(1, Ordering::AcqRel);
        let sent =
            depth < self.limits[Risk::High as usize] && self.tx.try_send(Msg::Command(cmd)).is_ok();
        if !sent {
            self.state.depth.fetch_sub(1, Ordering::AcqRel);
        }
        sent
    }

    /// Sends a command past the admission limits (for stopping); false when the queue is
    /// full. A stopped writer needs no command: that counts as sent.
    pub(crate) fn command_blocking(&self, cmd: Command) -> bool {
        self.state.depth.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(Msg::Command(cmd)) {
            Ok(()) => true,
            Err(e) => {
                self.state.depth.fetch_sub(1, Ordering::AcqRel);
                matches!(e, TrySendError::Disconnected(_))
            }
        }
    }

    /// Records queued and not yet taken by the writer.
    pub fn queued(&self) -> usize {
        self.state.depth.load(Ordering::Relaxed)
    }
}

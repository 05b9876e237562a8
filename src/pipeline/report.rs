//! What phases report: audit events about the request being handled (sampled where a
//! client could repeat them at will) and violations, which count towards a ban of the
//! client and, when one crosses the threshold, record the ban. One [`Report`] per request,
//! holding only what reporting needs.

use http::Request;

use super::{request_host, RequestCtx};
use crate::app::Shared;
use crate::bans::{until_text, Ban, BanSettings, Bans, Violation};
use crate::events::model::{bounded, MAX_TEXT_CHARS};
use crate::events::sampler::EventSampler;
use crate::events::{AuditEvent, EventType, Events};
use crate::ip_rules::IpRules;
use crate::runtime::Runtime;

/// Sampling kinds (see [`crate::events::sampler`]).
pub(crate) const SAMPLE_IP_BLOCKED: u8 = 1;
pub(crate) const SAMPLE_RATE_LIMITED: u8 = 2;
pub(crate) const SAMPLE_SESSION_INVALID: u8 = 3;
pub(crate) const SAMPLE_LOGIN_LOCKED: u8 = 4;
pub(crate) const SAMPLE_WAF: u8 = 5;

/// Events, sampling, bans and the IP rules' bypass list: what a phase needs to report.
pub struct Report<'a> {
    pub events: &'a Events,
    pub sampler: &'a EventSampler,
    pub bans: &'a Bans,
    pub ban_settings: &'a BanSettings,
    pub ip_rules: &'a IpRules,
    /// Shares new bans with the other instances of a cluster.
    pub shared: &'a Shared,
}

impl<'a> Report<'a> {
    pub fn of(shared: &'a Shared, rt: &'a Runtime) -> Report<'a> {
        Report {
            events: &shared.events,
            sampler: &shared.sampler,
            bans: &shared.bans,
            ban_settings: &rt.bans,
            ip_rules: &shared.ip_rules,
            shared,
        }
    }

    pub fn audit(&self, e: AuditEvent) {
        self.events.sink.audit(e);
    }

    /// How many times this (kind, key) was seen in the sampling interval, when this
    /// occurrence is the one to record.
    pub fn sample(&self, kind: u8, key: u128) -> Option<u64> {
        self.sampler.sample(kind, key)
    }

    /// Counts violation `v` of the request's client towards a ban (never for an address
    /// the IP rules exempt); when that bans it, emits `ban_event()` (an `ip_banned` event
    /// about the request) completed with the ban, and stores the ban without waiting.
    pub fn violation(
        &self,
        ctx: &RequestCtx,
        v: Violation,
        ban_event: impl FnOnce() -> AuditEvent,
    ) {
        if self.ip_rules.set.load().bypasses(ctx.client_ip) {
            return;
        }
        if let Some(ban) = self.bans.violation(self.ban_settings, ctx.client_key, v) {
            self.record_ban(ban_event(), ban);
        }
    }

    /// Emits `base` (an `ip_banned` event) for a new ban and stores the ban.
    pub fn record_ban(&self, mut base: AuditEvent, ban: Ban) {
        base.message = bounded(
            format!("banned {}: {}", until_text(&ban), ban.reason),
            MAX_TEXT_CHARS,
        );
        let mut base = base.detail("offenses", ban.offenses.to_string());
        if let Some(instance) = self.shared.instance() {
            base = base.detail("instance", instance);
        }
        self.events.sink.audit(base);
        self.shared
            .replicate(crate::cluster::sync::Change::Ban { ban: ban.clone() });
        self.events.write_detached(move |store| {
            if let Err(e) = crate::bans::save(store, &ban) {
                tracing::error!(error = %e, "storing a ban failed");
            }
        });
    }
}

/// An audit event about the request being handled (its canonical path and host).
pub(crate) fn request_event<B>(
    kind: EventType,
    message: String,
    ctx: &RequestCtx,
    req: &Request<B>,
) -> AuditEvent {
    let mut e = AuditEvent::new(kind, message)
        .ip(ctx.client_ip)
        .path(req.uri().path());
    e.route = ctx.route.as_ref().map(|r| r.name.to_string());
    e.host = Some(request_host(req).to_string());
    e.method = Some(req.method().to_string());
    e.request_id = ctx.request_id.to_str().ok().map(str::to_string);
    e
}

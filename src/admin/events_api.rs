//! The admin API over the event store: list, read, investigate and export audit events;
//! statistics; slow requests and latency trends; backups and archives.
//!
//! Every query runs on a blocking thread with its own read transaction; every change goes
//! through the event writer. Bad query parameters are answered 400 with the parameter named.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::AdminState;
use crate::events::model::{format_time, now_micros, parse_time, Patch, PatchError};
use crate::events::store::{AuditFilter, EventWithState, PatchOutcome, PerfFilter};
use crate::events::trends::{Granularity, HOURS_KEPT, MINUTES_KEPT};
use crate::events::{backup, CommandError, EventId, Store, StoreError};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/events", get(list_events))
        .route("/events/export", get(export_events))
        .route("/events/{id}", get(get_event).patch(patch_event))
        .route("/stats", get(stats))
        .route("/perf/slow", get(perf_slow))
        .route("/perf/trends", get(perf_trends))
        .route("/backups", get(list_backups).post(create_backup))
        .route("/backups/{name}/verify", post(verify_backup))
        .route("/archives", get(list_archives))
        .route("/archive/run", post(archive_run))
        .route("/archive/restore", post(archive_restore))
}

/// An error answer: a status and a message, as `{"error": message}`.
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message}))).into_response()
    }
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

fn fail(status: StatusCode, message: impl Into<String>) -> Response {
    error(status, message).into_response()
}

fn store_error(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "event store query failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Runs a store query on a blocking thread.
pub(super) async fn query<T: Send + 'static>(
    st: &AdminState,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = st.shared.events.store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(store_error(e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

fn parse<T: std::str::FromStr>(name: &str, v: &Option<String>) -> Result<Option<T>, ApiError>
where
    T::Err: std::fmt::Display,
{
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<T>()
            .map(Some)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("`{name}`: {e}"))),
    }
}

fn time(name: &str, v: &Option<String>) -> Result<Option<u64>, ApiError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => parse_time(s)
            .map(Some)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("`{name}`: {e}"))),
    }
}

fn limit(v: Option<usize>) -> Result<usize, ApiError> {
    match v {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("`limit`: must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct EventQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    risk: Option<String>,
    status: Option<String>,
    ip: Option<String>,
    user: Option<String>,
    route: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    format: Option<String>,
}

impl EventQuery {
    fn filter(&self) -> Result<AuditFilter, ApiError> {
        Ok(AuditFilter {
            kind: parse("type", &self.kind)?,
            risk: parse("risk", &self.risk)?,
            status: parse("status", &self.status)?,
            ip: parse::<IpAddr>("ip", &self.ip)?,
            user: self.user.clone().filter(|s| !s.is_empty()),
            route: self.route.clone().filter(|s| !s.is_empty()),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
        })
    }
}

fn page_json<T: serde::Serialize>(items: &[T], next: Option<EventId>) -> Response {
    Json(json!({
        "items": items,
        "count": items.len(),
        "next_cursor": next.map(|c| c.to_string()),
    }))
    .into_response()
}

async fn list_events(State(st): State<AdminState>, Query(q): Query<EventQuery>) -> Response {
    let run = async {
        let filter = q.filter()?;
        let cursor = parse::<EventId>("cursor", &q.cursor)?;
        let limit = limit(q.limit)?;
        let page = query(&st, move |s| s.list_audit(&filter, cursor, limit)).await?;
        Ok::<_, ApiError>(page_json(&page.items, page.next_cursor))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RelatedQuery {
    /// Seconds either side of the event for related events (default 3600).
    window: Option<u64>,
}

async fn get_event(
    State(st): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<RelatedQuery>,
) -> Response {
    let id = match id.parse::<EventId>() {
        Ok(id) => id,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    let window = q.window.unwrap_or(3600).min(30 * 24 * 3600) * 1_000_000;
    let found = query(&st, move |s| {
        let Some(ev) = s.get(id)? else {
            return Ok(None);
        };
        let related = s.related(&ev, window, 50)?;
        Ok(Some((ev, related)))
    })
    .await;
    match found {
        Ok(Some((ev, related))) => {
            let mut v = serde_json::to_value(&ev).unwrap_or_default();
            v["related"] = serde_json::to_value(&related).unwrap_or_default();
            Json(v).into_response()
        }
        Ok(None) => fail(StatusCode::NOT_FOUND, format!("no event {id}")),
        Err(r) => r.into_response(),
    }
}

async fn patch_event(
    State(st): State<AdminState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<Patch>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let id = match id.parse::<EventId>() {
        Ok(id) => id,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e),
    };
    let Json(mut patch) = match body {
        Ok(b) => b,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.body_text()),
    };
    // Who changes and who is assigned are the signed-in token's name, not free text.
    if !patch.by.is_empty() && patch.by != *caller.name {
        return fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "`by` is the caller's token name (`{}`); leave it out",
                caller.name
            ),
        );
    }
    patch.by = caller.name.to_string();
    if let Some(a) = &patch.assignee {
        let a = a.trim();
        if a == "me" {
            patch.assignee = Some(caller.name.to_string());
        } else if !a.is_empty() && !st.credentials.knows(a) {
            return fail(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("`assignee`: no admin token is named `{a}` (use `me`, a token name, or \"\" to unassign)"),
            );
        }
    }
    match st.shared.events.patch(id, patch).await {
        Ok(inv) => Json(json!({"id": id, "investigation": inv})).into_response(),
        Err(PatchOutcome::Refused(e @ PatchError::NotFound(_))) => {
            fail(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(PatchOutcome::Refused(e @ PatchError::Transition { .. })) => {
            fail(StatusCode::CONFLICT, e.to_string())
        }
        Err(PatchOutcome::Refused(e)) => fail(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        Err(PatchOutcome::Failed(e)) => store_error(e).into_response(),
        Err(PatchOutcome::Busy) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "the event writer is busy; try again",
        ),
    }
}

/// Streams every matching event (newest first) as NDJSON or CSV, page by page.
async fn export_events(State(st): State<AdminState>, Query(q): Query<EventQuery>) -> Response {
    let csv = match q.format.as_deref() {
        None | Some("ndjson") => false,
        Some("csv") => true,
        Some(f) => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("`format`: `{f}` is not ndjson or csv"),
            )
        }
    };
    let filter = match q.filter() {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let store = st.shared.events.store.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || export_pages(&store, &filter, csv, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let (ctype, ext) = if csv {
        ("text/csv; charset=utf-8", "csv")
    } else {
        ("application/x-ndjson", "ndjson")
    };
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"events.{ext}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

const CSV_HEADER: &str = "id,time,type,risk,status,client_ip,route,host,method,path,request_id,user,session,rule_ids,message\n";

fn export_pages(
    store: &Store,
    filter: &AuditFilter,
    csv: bool,
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
) {
    if csv
        && tx
            .blocking_send(Ok(CSV_HEADER.as_bytes().to_vec()))
            .is_err()
    {
        return;
    }
    let mut cursor = None;
    loop {
        let page = match store.list_audit(filter, cursor, 1000) {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                return;
            }
        };
        let mut chunk = Vec::with_capacity(page.items.len() * 256);
        for e in &page.items {
            if csv {
                csv_row(&mut chunk, e);
            } else {
                let _ = serde_json::to_writer(&mut chunk, e);
                chunk.push(b'\n');
            }
        }
        if !chunk.is_empty() && tx.blocking_send(Ok(chunk)).is_err() {
            return; // the client went away
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return,
        }
    }
}

fn csv_row(out: &mut Vec<u8>, e: &EventWithState) {
    let ev = &e.event;
    let fields: [String; 15] = [
        ev.id.to_string(),
        format_time(ev.time),
        ev.kind.as_str().into(),
        ev.risk.as_str().into(),
        e.investigation.status.as_str().into(),
        ev.client_ip.map(|i| i.to_string()).unwrap_or_default(),
        ev.route.clone().unwrap_or_default(),
        ev.host.clone().unwrap_or_default(),
        ev.method.clone().unwrap_or_default(),
        ev.path.clone().unwrap_or_default(),
        ev.request_id.clone().unwrap_or_default(),
        ev.user.clone().unwrap_or_default(),
        ev.session.clone().unwrap_or_default(),
        ev.rule_ids.join(" "),
        ev.message.clone(),
    ];
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_field(out, f);
    }
    out.push(b'\n');
}

/// RFC 4180 quoting; a leading `=`, `+`, `-` or `@` is prefixed with `'` so a spreadsheet
/// does not run attacker-supplied text (paths, user names) as a formula.
fn csv_field(out: &mut Vec<u8>, f: &str) {
    let formula = f.starts_with(['=', '+', '-', '@']);
    if !formula && !f.contains([',', '"', '\n', '\r']) {
        out.extend_from_slice(f.as_bytes());
        return;
    }
    out.push(b'"');
    if formula {
        out.push(b'\'');
    }
    out.extend_from_slice(f.replace('"', "\"\"").as_bytes());
    out.push(b'"');
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WindowQuery {
    since: Option<String>,
    until: Option<String>,
}

async fn stats(State(st): State<AdminState>, Query(q): Query<WindowQuery>) -> Response {
    let run = async {
        let until = time("until", &q.until)?.unwrap_or_else(now_micros);
        let since = time("since", &q.since)?.unwrap_or(until.saturating_sub(24 * 3600 * 1_000_000));
        if since > until {
            return Err(error(StatusCode::BAD_REQUEST, "`since` is after `until`"));
        }
        let stats = query(&st, move |s| s.stats(since, until)).await?;
        let m = &st.shared.metrics;
        let dropped: serde_json::Map<String, serde_json::Value> = crate::events::Risk::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str().to_string(),
                    json!(m.events_dropped.with_label_values(&[r.as_str()]).get()),
                )
            })
            .collect();
        Ok::<_, ApiError>(
            Json(json!({
                "since": format_time(since),
                "until": format_time(until),
                "total": stats.total,
                "by_type": stats.by_type,
                "by_risk": stats.by_risk,
                "by_status": stats.by_status,
                "open_high_and_critical": stats.open_high_and_critical,
                "top_blocked_ips": stats.top_blocked_ips.iter().map(|(ip, n)| json!({"ip": ip, "count": n})).collect::<Vec<_>>(),
                "top_rules": stats.top_rules.iter().map(|(r, n)| json!({"rule": r, "count": n})).collect::<Vec<_>>(),
                "timeline": {
                    "bucket_seconds": stats.timeline_bucket_micros / 1_000_000,
                    "buckets": stats.timeline.iter().enumerate().map(|(i, c)| json!({
                        "start": format_time(since + i as u64 * stats.timeline_bucket_micros),
                        "low": c[0], "medium": c[1], "high": c[2], "critical": c[3],
                    })).collect::<Vec<_>>(),
                },
                "performance_events": stats.performance_events,
                "task_failures": stats.task_failures,
                "events_dropped": dropped,
                "events_committed": m.events_committed.get(),
                "events_queued": st.shared.events.sink.queued(),
            }))
            .into_response(),
        )
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PerfQuery {
    route: Option<String>,
    severity: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn perf_slow(State(st): State<AdminState>, Query(q): Query<PerfQuery>) -> Response {
    let run = async {
        let severity = match q.severity.as_deref() {
            None | Some("") => None,
            Some(s) => Some(serde_json::from_value(json!(s)).map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("`severity`: `{s}` is not info, warning or critical"),
                )
            })?),
        };
        let filter = PerfFilter {
            route: q.route.clone().filter(|s| !s.is_empty()),
            severity,
            since: time("since", &q.since)?,
            until: time("until", &q.until)?,
        };
        let cursor = parse::<EventId>("cursor", &q.cursor)?;
        let limit = limit(q.limit)?;
        let page = query(&st, move |s| s.list_perf(&filter, cursor, limit)).await?;
        Ok::<_, ApiError>(page_json(&page.items, page.next_cursor))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TrendQuery {
    route: Option<String>,
    granularity: Option<String>,
    since: Option<String>,
}

async fn perf_trends(State(st): State<AdminState>, Query(q): Query<TrendQuery>) -> Response {
    let granularity = match q.granularity.as_deref() {
        None | Some("minute") => Granularity::Minute,
        Some("hour") => Granularity::Hour,
        Some(g) => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("`granularity`: `{g}` is not minute or hour"),
            )
        }
    };
    let now = now_micros() / 1_000_000;
    let kept = match granularity {
        Granularity::Minute => MINUTES_KEPT,
        Granularity::Hour => HOURS_KEPT,
    };
    let since = match time("since", &q.since) {
        Ok(s) => s.map_or(now.saturating_sub(kept), |s| s / 1_000_000),
        Err(r) => return r.into_response(),
    };
    let routes = st.shared.metrics.trends.query(
        q.route.as_deref().filter(|r| !r.is_empty()),
        granularity,
        since,
        now,
    );
    Json(json!({
        "granularity": granularity,
        "bucket_seconds": granularity.seconds(),
        "routes": routes,
    }))
    .into_response()
}

async fn list_backups(State(st): State<AdminState>) -> Response {
    let dir = st.shared.events.settings().backup.dir.clone();
    match tokio::task::spawn_blocking(move || backup::list(&dir)).await {
        Ok(Ok(files)) => Json(json!({"items": files})).into_response(),
        Ok(Err(e)) => store_error(e).into_response(),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Checks one backup in full (by file name in the backup directory): 200 with what it
/// holds, 404 when there is no such backup, 422 when it is damaged or unsafe.
async fn verify_backup(State(st): State<AdminState>, Path(name): Path<String>) -> Response {
    if !backup::is_backup_name(&name) {
        return fail(
            StatusCode::BAD_REQUEST,
            "the name of a backup file (backup-….tar.zst) in the backup directory",
        );
    }
    if !st.shared.events.settings().backup.dir.join(&name).is_file() {
        return fail(StatusCode::NOT_FOUND, format!("no backup {name}"));
    }
    let events = st.shared.events.clone();
    match tokio::task::spawn_blocking(move || events.verify_backup(&name)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e @ StoreError::Invalid(_))) => {
            fail(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Ok(Err(e)) => store_error(e).into_response(),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The archive files in the archive directory with their manifests (date ranges, counts).
async fn list_archives(State(st): State<AdminState>) -> Response {
    let dir = st.shared.events.settings().retention.archive_dir.clone();
    match tokio::task::spawn_blocking(move || crate::events::archive::list(&dir)).await {
        Ok(Ok(items)) => Json(json!({"items": items})).into_response(),
        Ok(Err(e)) => store_error(e).into_response(),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn create_backup(State(st): State<AdminState>) -> Response {
    let events = st.shared.events.clone();
    match tokio::task::spawn_blocking(move || events.backup_now()).await {
        Ok(Ok(info)) => (StatusCode::CREATED, Json(info)).into_response(),
        Ok(Err(e)) => store_error(e).into_response(),
        Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn command_error(e: CommandError) -> Response {
    match e {
        CommandError::Busy => fail(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        CommandError::Store(e) => store_error(e).into_response(),
    }
}

async fn archive_run(State(st): State<AdminState>) -> Response {
    match st.shared.events.archive_now().await {
        Ok(reports) => Json(json!({"archives": reports})).into_response(),
        Err(e) => command_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RestoreBody {
    /// An archive file name in the archive directory.
    file: String,
}

async fn archive_restore(
    State(st): State<AdminState>,
    body: Result<Json<RestoreBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return fail(StatusCode::BAD_REQUEST, e.body_text()),
    };
    // Only files in the archive directory, by name: the API cannot read arbitrary paths.
    if body.file.contains(['/', '\\'])
        || body.file.starts_with('.')
        || !body.file.ends_with(".ndjson.zst")
    {
        return fail(
            StatusCode::BAD_REQUEST,
            "`file`: the name of an archive file (archive-….ndjson.zst) in the archive directory",
        );
    }
    let path = st
        .shared
        .events
        .settings()
        .retention
        .archive_dir
        .join(&body.file);
    if !path.is_file() {
        return fail(StatusCode::NOT_FOUND, format!("no archive {}", body.file));
    }
    match st.shared.events.restore_archive(path).await {
        Ok(r) => Json(r).into_response(),
        Err(CommandError::Store(e @ StoreError::Invalid(_))) => {
            fail(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Err(e) => command_error(e),
    }
}

/// The OpenAPI document for the whole admin API.
pub(super) async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        include_str!("openapi.json"),
    )
        .into_response()
}

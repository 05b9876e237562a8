//! Compiles `[waf]` and the routes' `waf` keys: rule files loaded (their errors located
//! in the rule files), the engine built, each route's mode and exclusions resolved.

use std::path::PathBuf;
use std::sync::Arc;

use super::crs::{Crs, CrsSettings};
use super::engine::{Engine, Strategy};
use super::rule::{self, Target};
use super::{Exclusion, Mode, RoutePolicy, Settings, Waf};
use crate::config::CrsSection;
use crate::config::{ConfigErrors, KeyPath, LoadedConfig};

/// The strategy the proxy uses (see [`super::engine`] for the measurements).
pub const STRATEGY: Strategy = Strategy::Prefilter;

/// Compiles `[waf]`; `None` when no rule file is configured.
pub fn compile(cfg: &LoadedConfig, errs: &mut ConfigErrors) -> Option<Arc<Waf>> {
    let w = &cfg.raw.waf;
    let at = KeyPath::of(&["waf"]);
    let settings = settings(cfg, errs);
    if w.rules.is_empty() && w.crs.is_none() {
        return None;
    }
    let crs = w.crs.as_ref().and_then(|c| crs(cfg, c, errs));
    let mut files: Vec<PathBuf> = Vec::new();
    for (i, p) in w.rules.iter().enumerate() {
        let path = cfg.resolve(p);
        match rule::expand(&path) {
            Ok(found) if found.is_empty() => errs.push(cfg.error(
                &at.key("rules").index(i),
                format!("no rule file matches {}", path.display()),
            )),
            Ok(found) => files.extend(found),
            Err(e) => errs.push(cfg.error(
                &at.key("rules").index(i),
                format!("{}: {e}", path.display()),
            )),
        }
    }
    let rules = match rule::load_files(&files) {
        Ok(r) => r,
        Err(e) => {
            errs.0.extend(e.0);
            return None;
        }
    };
    let mut ids: Vec<u32> = rules.iter().map(|r| r.id).collect();
    if let Some(c) = &crs {
        ids.extend(c.rule_ids());
    }
    for (i, x) in w.exclusions.iter().enumerate() {
        let xat = at.key("exclusions").index(i);
        for (j, id) in x.rules.iter().enumerate() {
            if !ids.contains(id) && *id >= rule::FIRST_RULE_ID {
                errs.push(cfg.error(&xat.key("rules").index(j), format!("no rule with id {id}")));
            }
        }
        for (j, r) in x.routes.iter().enumerate() {
            if !cfg.raw.routes.iter().any(|x| &x.name == r) {
                errs.push(cfg.error(&xat.key("routes").index(j), format!("no route named `{r}`")));
            }
        }
        if let Some(t) = &x.target {
            if let Err(m) = Target::parse(t) {
                errs.push(cfg.error(&xat.key("target"), m));
            }
        }
        if x.path_prefix
            .as_deref()
            .is_some_and(|p| !p.starts_with('/'))
        {
            errs.push(cfg.error(&xat.key("path_prefix"), "must start with `/`"));
        }
    }
    let engine = Engine::compile(&rules, settings.paranoia_level, STRATEGY);
    let mut waf = Waf::new(engine, settings, files);
    waf.crs = crs.map(Arc::new);
    Some(Arc::new(waf))
}

/// Loads `[waf.crs]`; its errors (a rule that cannot be translated included) are config
/// errors at `waf.crs`.
fn crs(cfg: &LoadedConfig, c: &CrsSection, errs: &mut ConfigErrors) -> Option<Crs> {
    let at = KeyPath::of(&["waf", "crs"]);
    let mut ok = true;
    if !(1..=4).contains(&c.paranoia_level) {
        errs.push(cfg.error(&at.key("paranoia_level"), "must be 1 to 4"));
        ok = false;
    }
    if let Some(d) = c.detection_paranoia_level {
        if !(c.paranoia_level..=4).contains(&d) {
            errs.push(cfg.error(
                &at.key("detection_paranoia_level"),
                "must be paranoia_level to 4",
            ));
            ok = false;
        }
    }
    if c.inbound_threshold == 0 {
        errs.push(cfg.error(&at.key("inbound_threshold"), "must be at least 1"));
        ok = false;
    }
    if !ok {
        return None;
    }
    let mut s = CrsSettings::new(cfg.resolve(&c.path));
    s.paranoia_level = c.paranoia_level;
    s.detection_paranoia_level = c.detection_paranoia_level.unwrap_or(c.paranoia_level);
    s.inbound_threshold = c.inbound_threshold;
    s.allow_partial = c.allow_partial;
    s.confirm = c.confirm;
    s.setup = c
        .setup
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    s.remove_ids = c.remove_rules.clone();
    match Crs::load(&s) {
        Ok(crs) => {
            let r = &crs.report;
            tracing::info!(
                rules = r.rules,
                response_rules_not_run = r.response_rules,
                untranslatable = r.untranslatable.len(),
                "CRS loaded from {}",
                s.path.display()
            );
            for (id, why) in &r.untranslatable {
                tracing::warn!(rule = id, "CRS rule not loaded: {why}");
            }
            Some(crs)
        }
        Err(e) => {
            let key = match e {
                crate::waf::crs::CrsError::Untranslatable(_) => at.key("allow_partial"),
                _ => at.key("path"),
            };
            errs.push(cfg.error(&key, e.to_string()));
            None
        }
    }
}

fn settings(cfg: &LoadedConfig, errs: &mut ConfigErrors) -> Settings {
    let w = &cfg.raw.waf;
    let at = KeyPath::of(&["waf"]);
    if !(1..=4).contains(&w.paranoia_level) {
        errs.push(cfg.error(&at.key("paranoia_level"), "must be 1 to 4"));
    }
    if w.inbound_threshold == 0 {
        errs.push(cfg.error(&at.key("inbound_threshold"), "must be at least 1"));
    }
    if w.body_limit == 0 {
        errs.push(cfg.error(&at.key("body_limit"), "must be greater than zero"));
    }
    if w.body_timeout.is_zero() {
        errs.push(cfg.error(&at.key("body_timeout"), "must be greater than zero"));
    }
    for key in ["max_args", "max_arg_bytes", "max_total_arg_bytes"] {
        let v = match key {
            "max_args" => w.max_args,
            "max_arg_bytes" => w.max_arg_bytes,
            _ => w.max_total_arg_bytes,
        };
        if v == 0 {
            errs.push(cfg.error(&at.key(key), "must be greater than zero"));
        }
    }
    let g = &w.graphql;
    for (key, v) in [
        ("max_depth", g.max_depth),
        ("max_aliases", g.max_aliases),
        ("max_batch", g.max_batch),
    ] {
        if v == 0 {
            errs.push(cfg.error(&at.key("graphql").key(key), "must be at least 1"));
        }
    }
    Settings {
        graphql: crate::waf::graphql::Limits {
            introspection: g.introspection,
            max_depth: g.max_depth,
            max_aliases: g.max_aliases,
            max_batch: g.max_batch,
        },
        paranoia_level: w.paranoia_level,
        inbound_threshold: w.inbound_threshold,
        body_limit: usize::try_from(w.body_limit).unwrap_or(usize::MAX),
        over_limit: w.over_limit,
        body_timeout: w.body_timeout,
        max_args: w.max_args,
        max_arg_bytes: w.max_arg_bytes,
        max_total_arg_bytes: w.max_total_arg_bytes,
    }
}

/// The WAF policy of the route at `index` in `[[routes]]`.
pub fn route_policy(cfg: &LoadedConfig, index: usize) -> RoutePolicy {
    let w = &cfg.raw.waf;
    let r = &cfg.raw.routes[index];
    let mode = if w.rules.is_empty() && w.crs.is_none() {
        Mode::Off
    } else {
        r.waf.unwrap_or(w.mode)
    };
    let exclusions = w
        .exclusions
        .iter()
        .filter(|x| x.routes.is_empty() || x.routes.contains(&r.name))
        .map(|x| Exclusion {
            rules: x.rules.clone(),
            path_prefix: x.path_prefix.clone(),
            target: x.target.as_deref().and_then(|t| Target::parse(t).ok()),
        })
        .collect();
    RoutePolicy { mode, exclusions }
}

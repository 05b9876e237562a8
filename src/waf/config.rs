//! Compiles `[waf]` and the routes' `waf` keys: rule files loaded (their errors located
//! in the rule files), the engine built, each route's mode and exclusions resolved.

use std::path::PathBuf;
use std::sync::Arc;

use super::engine::{Engine, Strategy};
use super::rule::{self, Target};
use super::{Exclusion, Mode, RoutePolicy, Settings, Waf};
use crate::config::{ConfigErrors, KeyPath, LoadedConfig};

/// The strategy the proxy uses (see [`super::engine`] for the measurements).
pub const STRATEGY: Strategy = Strategy::Prefilter;

/// Compiles `[waf]`; `None` when no rule file is configured.
pub fn compile(cfg: &LoadedConfig, errs: &mut ConfigErrors) -> Option<Arc<Waf>> {
    let w = &cfg.raw.waf;
    let at = KeyPath::of(&["waf"]);
    let settings = settings(cfg, errs);
    if w.rules.is_empty() {
        return None;
    }
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
    let ids: Vec<u32> = rules.iter().map(|r| r.id).collect();
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
    Some(Arc::new(Waf::new(engine, settings, files)))
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
    Settings {
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
    let mode = if w.rules.is_empty() {
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

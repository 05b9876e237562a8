//! A rule's actions: `severity`, `setvar` and `ctl` parsed, TX names normalized.

use super::*;

pub(super) fn severity(v: &str) -> Result<u8, String> {
    Ok(match v.to_ascii_uppercase().as_str() {
        "EMERGENCY" | "0" => 0,
        "ALERT" | "1" => 1,
        "CRITICAL" | "2" => 2,
        "ERROR" | "3" => 3,
        "WARNING" | "4" => 4,
        "NOTICE" | "5" => 5,
        "INFO" | "6" => 6,
        "DEBUG" | "7" => 7,
        _ => return Err(format!("bad severity `{v}`")),
    })
}

/// The key of a variable in a transaction's variable map: `tx.name` → `name` (TX is
/// what CRS uses, so its keys need no prefix), any other collection keeps its name after
/// an `@` (`@ip.name`), which no TX key starts with.
pub fn var_key(name: &str) -> std::borrow::Cow<'_, str> {
    match name.strip_prefix("tx.") {
        Some(k) => std::borrow::Cow::Borrowed(k),
        None => std::borrow::Cow::Owned(format!("@{name}")),
    }
}

pub(super) fn setvar(v: &str) -> Result<SetVar, String> {
    if let Some(name) = v.strip_prefix('!') {
        let name = Macro::parse(&name.to_ascii_lowercase())?;
        return Ok(SetVar {
            key: name.literal().map(|l| var_key(l).into_owned()),
            slot: NO_TX,
            name,
            op: SetOp::Delete,
            value: Macro::default(),
        });
    }
    let (name, value) = v.split_once('=').unwrap_or((v, "1"));
    let (op, value) = if let Some(x) = value.strip_prefix('+') {
        (SetOp::Add, x)
    } else if let Some(x) = value.strip_prefix('-') {
        (SetOp::Sub, x)
    } else {
        (SetOp::Set, value)
    };
    let name = name.trim();
    if !name.contains('.') {
        return Err(format!("setvar `{v}`: no collection"));
    }
    let name = Macro::parse(&name.to_ascii_lowercase())?;
    Ok(SetVar {
        key: name.literal().map(|l| var_key(l).into_owned()),
        slot: NO_TX,
        name,
        op,
        value: Macro::parse(value)?,
    })
}

pub(super) fn ctl(v: &str) -> Result<Ctl, String> {
    let (k, val) = v
        .split_once('=')
        .ok_or_else(|| format!("ctl `{v}` without a value"))?;
    let target = |s: &str| -> Result<(Var, Option<Vec<u8>>), String> {
        let (n, key) = match s.split_once(':') {
            Some((n, k)) => (n, Some(k.to_ascii_lowercase().into_bytes())),
            None => (s, None),
        };
        let var = Var::from_name(n).ok_or_else(|| format!("ctl `{v}`: unknown variable `{n}`"))?;
        Ok((var, key))
    };
    Ok(match k {
        "ruleRemoveById" => Ctl::RemoveById(val.split([' ', ',']).filter_map(id_range).collect()),
        "ruleRemoveByTag" => Ctl::RemoveByTag(val.to_string()),
        "ruleRemoveTargetById" | "ruleRemoveTargetByTag" => {
            let (who, t) = val
                .split_once(';')
                .ok_or_else(|| format!("ctl `{v}`: no target"))?;
            let (var, key) = target(t)?;
            if k.ends_with("ById") {
                Ctl::RemoveTargetById(
                    who.parse().map_err(|_| format!("ctl `{v}`: bad id"))?,
                    var,
                    key,
                )
            } else {
                Ctl::RemoveTargetByTag(who.to_string(), var, key)
            }
        }
        "ruleEngine" => Ctl::RuleEngine(match val.to_ascii_lowercase().as_str() {
            "on" => EngineMode::On,
            "off" => EngineMode::Off,
            "detectiononly" => EngineMode::DetectionOnly,
            _ => return Err(format!("ctl `{v}`: bad engine mode")),
        }),
        "forceRequestBodyVariable" => Ctl::ForceRequestBodyVariable,
        "requestBodyProcessor" => Ctl::RequestBodyProcessor(val.to_ascii_uppercase()),
        "auditEngine" | "auditLogParts" => Ctl::AuditEngine,
        _ => return Err(format!("unsupported ctl `{k}`")),
    })
}

/// `942100` or `942100-942999`.
pub(super) fn id_range(s: &str) -> Option<(u32, u32)> {
    let s = s.trim();
    match s.split_once('-') {
        Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
        None => s.parse().ok().map(|v| (v, v)),
    }
}

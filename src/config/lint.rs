//! Warnings `check` prints about a config that loads but probably does not say what its
//! author meant: rules that can never match, rules hidden behind earlier ones, APIs no role
//! reaches. Each has a stable code (`W001`…); `check --strict` fails on any.

use std::fmt;

use http::Method;

use super::{Config, Grant};
use crate::types::PathPattern;

/// One warning: its code, the key path it is about, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub code: &'static str,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.code, self.path, self.message)
    }
}

/// Every code, with what it means (the README lists the same).
pub const CODES: &[(&str, &str)] = &[
    ("W001", "a grant or deny rule that can match no call: none of its methods is allowed on the API, or its path lies outside the API's paths"),
    ("W002", "a rule that an earlier rule of the same role and list already covers entirely"),
    ("W003", "an API that no role (and no key's allowed_apis) can reach while roles exist"),
    ("W004", "a role with no allow rule"),
    ("W005", "an allow rule that a deny rule of the same role covers entirely: the deny wins everywhere"),
    ("W006", "an API sends users to connect links, but the links point at a loopback address because mcp.public_url is not set while the MCP listener is not on loopback"),
];

/// The warnings of a loaded config, in key-path order.
pub fn lint(config: &Config) -> Vec<Warning> {
    let mut out = Vec::new();
    let warn = |out: &mut Vec<Warning>, code, path: String, message: String| {
        out.push(Warning {
            code,
            path,
            message,
        })
    };
    for (i, role) in config.rbac.roles.iter().enumerate() {
        if role.allow.is_empty() {
            warn(
                &mut out,
                "W004",
                format!("rbac.roles[{i}]"),
                format!(
                    "role {:?} has no allow rule, so it grants nothing",
                    role.name
                ),
            );
        }
        for (list, rules) in [("allow", &role.allow), ("deny", &role.deny)] {
            for (j, g) in rules.iter().enumerate() {
                let path = format!("rbac.roles[{i}].{list}[{j}]");
                if let Some(why) = never_matches(config, g) {
                    warn(&mut out, "W001", path.clone(), why);
                }
                if let Some(k) = rules[..j].iter().position(|earlier| covers(earlier, g)) {
                    warn(
                        &mut out,
                        "W002",
                        path.clone(),
                        format!("rbac.roles[{i}].{list}[{k}] already covers every call this rule covers"),
                    );
                }
                if list == "allow" {
                    if let Some(k) = role.deny.iter().position(|d| !d.shadow && covers(d, g)) {
                        warn(
                            &mut out,
                            "W005",
                            path,
                            format!(
                                "rbac.roles[{i}].deny[{k}] refuses every call this rule allows"
                            ),
                        );
                    }
                }
            }
        }
    }
    if config.rbac.enabled() {
        for (i, api) in config.apis.iter().enumerate() {
            let by_role = config
                .rbac
                .roles
                .iter()
                .any(|r| r.allow.iter().any(|g| g.covers_api(&api.name)));
            let by_key = config.auth.api_keys.iter().any(|k| {
                k.roles.is_empty()
                    && k.allowed_apis
                        .as_ref()
                        .is_some_and(|l| l.iter().any(|a| a == &api.name))
            });
            if !by_role && !by_key {
                warn(
                    &mut out,
                    "W003",
                    format!("apis[{i}]"),
                    format!(
                        "no role allows API {:?}, so no caller can reach it",
                        api.name
                    ),
                );
            }
        }
    }
    let listener = config.server.mcp_listen.ip();
    if config.mcp.public_url_default && !listener.is_loopback() {
        for (i, api) in config.apis.iter().enumerate() {
            if api
                .dynamic_credential
                .as_ref()
                .is_some_and(|d| d.mode.stored())
            {
                warn(
                    &mut out,
                    "W006",
                    format!("apis[{i}].credentials"),
                    format!(
                        "connect links for API {:?} point at {}, which users' browsers elsewhere cannot reach: set mcp.public_url",
                        api.name, config.mcp.public_url
                    ),
                );
            }
        }
    }
    out
}

/// Why a grant can match no call, if it cannot.
fn never_matches(config: &Config, g: &Grant) -> Option<String> {
    let apis: Vec<_> = config
        .apis
        .iter()
        .filter(|a| g.covers_api(&a.name))
        .collect();
    if apis.is_empty() {
        return None; // An unknown API is a config error, reported already.
    }
    let method_ok =
        |methods: &[Method]| g.methods.is_empty() || g.methods.iter().any(|m| methods.contains(m));
    if !apis.iter().any(|a| method_ok(&a.methods)) {
        return Some(format!(
            "none of its methods ({}) is allowed on {}",
            g.methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            if g.api == "*" {
                "any API".to_string()
            } else {
                format!("API {:?}", g.api)
            }
        ));
    }
    for p in &g.paths {
        let reachable = apis.iter().any(|a| a.paths.iter().any(|ap| overlap(ap, p)));
        if !reachable {
            return Some(format!(
                "its path {:?} lies outside the paths of {}",
                p.as_str(),
                if g.api == "*" {
                    "every API".to_string()
                } else {
                    format!("API {:?}", g.api)
                }
            ));
        }
    }
    None
}

/// Whether two path patterns can match a common path: each is tried on a path the other
/// matches (`*` and `**` as one segment `x`, or `**` as nothing).
fn overlap(a: &PathPattern, b: &PathPattern) -> bool {
    let samples = |p: &PathPattern| -> Vec<Vec<String>> {
        let segs: Vec<&str> = p.as_str().split('/').filter(|s| !s.is_empty()).collect();
        let one: Vec<String> = segs
            .iter()
            .map(|s| {
                if s.starts_with('*') {
                    "x".to_string()
                } else {
                    s.to_string()
                }
            })
            .collect();
        let none: Vec<String> = segs
            .iter()
            .filter(|s| **s != "**")
            .map(|s| {
                if *s == "*" {
                    "x".to_string()
                } else {
                    s.to_string()
                }
            })
            .collect();
        vec![one, none]
    };
    let hits = |p: &PathPattern, q: &PathPattern| {
        samples(q).iter().any(|s| {
            let s: Vec<&str> = s.iter().map(String::as_str).collect();
            p.matches_case(&s, crate::types::Case::Insensitive)
        })
    };
    hits(a, b) || hits(b, a)
}

/// Whether `earlier` covers every call `later` covers.
fn covers(earlier: &Grant, later: &Grant) -> bool {
    let api = earlier.api == "*" || earlier.api == later.api;
    let methods = earlier.methods.is_empty()
        || (!later.methods.is_empty() && later.methods.iter().all(|m| earlier.methods.contains(m)));
    let paths = earlier.paths.is_empty()
        || (!later.paths.is_empty()
            && later.paths.iter().all(|p| {
                earlier
                    .paths
                    .iter()
                    .any(|e| e.as_str() == p.as_str() || e.as_str() == "/**")
            }));
    api && methods && paths
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(rbac: &str) -> Vec<String> {
        let text = format!(
            "[auth]\nrequired = false\n\
             [[apis]]\nname = \"gh\"\nbase_url = \"https://gh.example\"\nmethods = [\"GET\"]\npaths = [\"/repos/**\"]\n\
             [[apis]]\nname = \"lonely\"\nbase_url = \"https://l.example\"\nmethods = [\"GET\"]\npaths = [\"/**\"]\n{rbac}"
        );
        let c = Config::parse(&text, &|_| None).unwrap();
        lint(&c).iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn each_warning_names_its_code_and_key_path() {
        let w = warnings(
            "[[rbac.roles]]\nname = \"a\"\n\
             allow = [{ api = \"gh\", paths = [\"/users/**\"] }, { api = \"gh\", methods = [\"DELETE\"] },\
                      { api = \"gh\" }, { api = \"gh\", paths = [\"/repos/x\"] }]\n\
             deny = [{ api = \"gh\" }]\n\
             [[rbac.roles]]\nname = \"empty\"\n",
        );
        let has = |s: &str| w.iter().any(|x| x.starts_with(s));
        assert!(
            has("W001 rbac.roles[0].allow[0]: its path \"/users/**\""),
            "{w:#?}"
        );
        assert!(
            has("W001 rbac.roles[0].allow[1]: none of its methods (DELETE)"),
            "{w:#?}"
        );
        assert!(
            has("W002 rbac.roles[0].allow[3]: rbac.roles[0].allow[2]"),
            "{w:#?}"
        );
        assert!(
            has("W005 rbac.roles[0].allow[2]: rbac.roles[0].deny[0]"),
            "{w:#?}"
        );
        assert!(has("W004 rbac.roles[1]"), "{w:#?}");
        assert!(has("W003 apis[1]: no role allows API \"lonely\""), "{w:#?}");
        assert!(
            !has("W001 rbac.roles[0].allow[2]") && !has("W001 rbac.roles[0].allow[3]"),
            "{w:#?}"
        );
    }

    #[test]
    fn a_config_without_rbac_has_no_warnings() {
        assert!(warnings("").is_empty());
    }
}

//! Allowed-path patterns (`/repos/*/issues`, `/admin/**`): written in config, matched by
//! the policy checks against an endpoint's percent-decoded segments.

/// An allowed-path pattern. Segments are literals, `*` (exactly one segment) or `**` (any
/// number of segments, including none). Matching is on percent-decoded segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    raw: String,
    segments: Vec<PatternSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PatternSegment {
    Literal(String),
    One,
    Any,
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if !s.starts_with('/') {
            return Err(format!("{s:?} must start with '/'"));
        }
        let mut segments = Vec::new();
        for seg in s[1..].split('/') {
            let p = match seg {
                "" => continue,
                "*" => PatternSegment::One,
                "**" => PatternSegment::Any,
                lit if lit.contains('*') => {
                    return Err(format!(
                        "{s:?}: '*' must be a whole segment (\"*\" or \"**\")"
                    ))
                }
                "." | ".." => return Err(format!("{s:?}: dot segments are not allowed")),
                lit => PatternSegment::Literal(lit.to_string()),
            };
            segments.push(p);
        }
        Ok(PathPattern {
            raw: s.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whether the decoded path segments match, literals compared exactly. Empty segments
    /// (a trailing slash) are ignored.
    pub fn matches(&self, path: &[&str]) -> bool {
        self.matches_case(path, Case::Sensitive)
    }

    /// Whether the decoded path segments match, literals compared as `case` says.
    pub fn matches_case(&self, path: &[&str], case: Case) -> bool {
        let path: Vec<&str> = path.iter().copied().filter(|s| !s.is_empty()).collect();
        self.matches_nonempty(&path, case)
    }

    /// [`PathPattern::matches_case`] for segments known to hold no empty one: no allocation.
    pub fn matches_nonempty(&self, path: &[&str], case: Case) -> bool {
        match_segments(&self.segments, path, case)
    }
}

/// How path literals compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Sensitive,
    /// ASCII case folded, as many upstream frameworks route.
    Insensitive,
}

fn match_segments(pattern: &[PatternSegment], path: &[&str], case: Case) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((PatternSegment::Any, rest)) => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..], case))
        }
        Some((PatternSegment::One, rest)) => {
            !path.is_empty() && match_segments(rest, &path[1..], case)
        }
        Some((PatternSegment::Literal(lit), rest)) => {
            path.first().is_some_and(|p| match case {
                Case::Sensitive => p == lit,
                Case::Insensitive => p.eq_ignore_ascii_case(lit),
            }) && match_segments(rest, &path[1..], case)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, path: &str) -> bool {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        PathPattern::parse(p).unwrap().matches(&segs)
    }

    #[test]
    fn path_patterns() {
        assert!(m("/**", "/"));
        assert!(m("/**", "/a/b/c"));
        assert!(m("/user", "/user"));
        assert!(m("/user", "/user/"));
        assert!(!m("/user", "/users"));
        assert!(!m("/user", "/user/x"));
        assert!(m("/repos/**", "/repos"));
        assert!(m("/repos/**", "/repos/a/b"));
        assert!(!m("/repos/**", "/reposx/a"));
        assert!(m("/repos/*/issues", "/repos/x/issues"));
        assert!(!m("/repos/*/issues", "/repos/issues"));
        assert!(m("/a/**/z", "/a/z"));
        assert!(m("/a/**/z", "/a/b/c/z"));
        assert!(!m("/a/**/z", "/a/b/c"));
        assert!(PathPattern::parse("v1").is_err());
        assert!(PathPattern::parse("/v1*").is_err());
        assert!(PathPattern::parse("/../x").is_err());
    }
}

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

/// Glob matching over segments, `**` as the star and `*` as the single wildcard: the
/// classic greedy algorithm that returns to the last `**` on a mismatch. It takes at most
/// pattern × path steps, so a path of thousands of segments against a rule with several `**`
/// cannot make matching explode (a plain recursive match would try every split).
fn match_segments(pattern: &[PatternSegment], path: &[&str], case: Case) -> bool {
    let one = |seg: &PatternSegment, p: &str| match seg {
        PatternSegment::One => true,
        PatternSegment::Literal(lit) => match case {
            Case::Sensitive => p == lit,
            Case::Insensitive => p.eq_ignore_ascii_case(lit),
        },
        PatternSegment::Any => false,
    };
    let (mut p, mut s) = (0, 0);
    // The last `**` seen, and the path position its current try consumes up to.
    let mut star: Option<(usize, usize)> = None;
    while s < path.len() {
        match pattern.get(p) {
            Some(PatternSegment::Any) => {
                star = Some((p, s));
                p += 1;
            }
            Some(seg) if one(seg, path[s]) => {
                p += 1;
                s += 1;
            }
            _ => match star {
                // Let that `**` take one more segment and try again after it.
                Some((sp, ss)) => {
                    star = Some((sp, ss + 1));
                    p = sp + 1;
                    s = ss + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..]
        .iter()
        .all(|seg| matches!(seg, PatternSegment::Any))
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

    /// Several `**` against a path of thousands of segments: answered, not explored.
    #[test]
    fn many_double_stars_against_a_long_path_stay_linear() {
        let pattern = PathPattern::parse("/**/a/**/b/**/c/**/d/**/e").unwrap();
        let long: Vec<&str> = std::iter::repeat_n("a", 4000).collect();
        assert!(!pattern.matches(&long));
        let mut hit = long.clone();
        hit.extend(["b", "c", "d", "e"]);
        assert!(pattern.matches(&hit));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// The definition: every way `**` can split the path is tried.
        fn reference(pattern: &[PatternSegment], path: &[&str], case: Case) -> bool {
            match pattern.split_first() {
                None => path.is_empty(),
                Some((PatternSegment::Any, rest)) => {
                    (0..=path.len()).any(|skip| reference(rest, &path[skip..], case))
                }
                Some((PatternSegment::One, rest)) => {
                    !path.is_empty() && reference(rest, &path[1..], case)
                }
                Some((PatternSegment::Literal(lit), rest)) => {
                    path.first().is_some_and(|p| match case {
                        Case::Sensitive => p == lit,
                        Case::Insensitive => p.eq_ignore_ascii_case(lit),
                    }) && reference(rest, &path[1..], case)
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// The linear matcher agrees with the definition on any pattern and path.
            #[test]
            fn matching_agrees_with_the_definition(
                pattern in proptest::collection::vec(prop_oneof!["a", "A", "b", "\\*", "\\*\\*"], 0..7),
                path in proptest::collection::vec(prop_oneof!["a", "A", "b", "c"], 0..9),
                insensitive in any::<bool>(),
            ) {
                let p = PathPattern::parse(&format!("/{}", pattern.join("/"))).unwrap();
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                let case = if insensitive { Case::Insensitive } else { Case::Sensitive };
                prop_assert_eq!(
                    p.matches_nonempty(&path, case),
                    reference(&p.segments, &path, case),
                    "{} against {:?}", p.as_str(), path
                );
            }
        }
    }
}

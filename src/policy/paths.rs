//! How a request path meets path rules. Upstream frameworks differ in what they route on:
//! many drop matrix parameters (`/admin;x=1/secret` is `/admin/secret` to them) and some
//! ignore case. So a path is judged in two forms, as sent and with matrix parameters
//! stripped, and each kind of rule takes the reading that is safe for it:
//! - a deny rule (`deny_paths`, RBAC `deny`) refuses when it matches either form, case folded;
//! - an allow rule (`paths`, RBAC `allow`) admits only when it matches both forms, with the
//!   API's case (`case_insensitive_paths`);
//! - an endpoint rate limit applies when it matches either form, with the API's case.

use crate::types::{Case, PathPattern};

/// A request path's decoded segments, as sent and with matrix parameters stripped; empty
/// segments (a trailing slash) are left out, as patterns ignore them.
pub struct RequestPath<'a> {
    sent: Vec<&'a str>,
    plain: Vec<&'a str>,
}

impl<'a> RequestPath<'a> {
    pub fn new(mut sent: Vec<&'a str>) -> RequestPath<'a> {
        sent.retain(|s| !s.is_empty());
        let plain = sent
            .iter()
            .map(|s| s.split(';').next().unwrap_or(""))
            .collect();
        RequestPath { sent, plain }
    }

    /// Whether a deny rule covers the path: either form, case folded.
    pub fn denied_by(&self, p: &PathPattern) -> bool {
        p.matches_nonempty(&self.sent, Case::Insensitive)
            || p.matches_nonempty(&self.plain, Case::Insensitive)
    }

    /// Whether an allow rule covers the path: both forms, compared as `case` says.
    pub fn allowed_by(&self, p: &PathPattern, case: Case) -> bool {
        p.matches_nonempty(&self.sent, case) && p.matches_nonempty(&self.plain, case)
    }

    /// Whether an endpoint limit applies to the path: either form, compared as `case` says.
    pub fn limited_by(&self, p: &PathPattern, case: Case) -> bool {
        p.matches_nonempty(&self.sent, case) || p.matches_nonempty(&self.plain, case)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> RequestPath<'_> {
        RequestPath::new(s.trim_start_matches('/').split('/').collect())
    }

    fn pat(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn each_kind_of_rule_reads_the_path_its_safe_way() {
        let admin = pat("/admin/**");
        for p in [
            "/admin/x",
            "/Admin/x",
            "/ADMIN",
            "/admin;x=1/secret",
            "/admin;/x",
        ] {
            assert!(path(p).denied_by(&admin), "{p}");
        }
        assert!(!path("/administrator").denied_by(&admin));
        let repos = pat("/repos/**");
        assert!(path("/repos/a").allowed_by(&repos, Case::Sensitive));
        assert!(!path("/Repos/a").allowed_by(&repos, Case::Sensitive));
        assert!(path("/Repos/a").allowed_by(&repos, Case::Insensitive));
        // A matrix parameter where the rule names a literal: the two forms disagree.
        assert!(!path("/repos;x=1/a").allowed_by(&repos, Case::Sensitive));
        assert!(path("/repos/a;x=1").allowed_by(&repos, Case::Sensitive));
        let search = pat("/search/**");
        assert!(path("/search;v=2/a").limited_by(&search, Case::Sensitive));
        assert!(!path("/Search/a").limited_by(&search, Case::Sensitive));
        assert!(path("/Search/a").limited_by(&search, Case::Insensitive));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn segment() -> impl Strategy<Value = String> {
            prop_oneof!["admin", "Admin", "x", "secret", "v1"]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// A path a deny rule refuses stays refused whatever case it is sent in and
            /// whatever matrix parameters ride on its segments; and whatever an allow rule
            /// admits, it admits in the stripped form too (the form an upstream may route).
            #[test]
            fn deny_holds_through_case_and_matrix_parameters(
                rule in proptest::collection::vec(prop_oneof!["admin", "x", "\\*", "\\*\\*"], 1..4),
                segs in proptest::collection::vec(segment(), 1..5),
                upper in proptest::collection::vec(any::<bool>(), 5),
                params in proptest::collection::vec(prop_oneof!["", ";x=1", ";", ";v=2;y"], 5),
            ) {
                let rule = PathPattern::parse(&format!("/{}", rule.join("/"))).unwrap();
                let plain: Vec<&str> = segs.iter().map(String::as_str).collect();
                let variant: Vec<String> = segs
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let s = if upper[i] { s.to_ascii_uppercase() } else { s.clone() };
                        format!("{s}{}", params[i])
                    })
                    .collect();
                let variant_path = RequestPath::new(variant.iter().map(String::as_str).collect());
                if RequestPath::new(plain.clone()).denied_by(&rule) {
                    prop_assert!(variant_path.denied_by(&rule), "{} misses {:?}", rule.as_str(), variant);
                }
                for case in [Case::Sensitive, Case::Insensitive] {
                    if variant_path.allowed_by(&rule, case) {
                        let stripped: Vec<&str> = variant.iter().map(|s| s.split(';').next().unwrap_or("")).collect();
                        prop_assert!(rule.matches_case(&stripped, case));
                    }
                }
            }
        }
    }
}

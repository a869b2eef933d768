//! The console's audit search over a real trail of 100,000 records (written by the gateway's
//! own audit writer, file and SQLite sinks): the newest page, a filtered page deep in the
//! file, the page after a cursor, and a filter that matches nothing (a whole scan). Run with
//! `cargo bench --bench audit_search`; figures in BENCHMARKS.md.

use std::hint::black_box;

use api_gateway_mcp::audit::search::{search, Query};
use api_gateway_mcp::audit::{AuditEvent, Auditor};
use api_gateway_mcp::config::Config;
use api_gateway_mcp::types::Door;
use criterion::{criterion_group, criterion_main, Criterion};

const RECORDS: usize = 100_000;

/// A trail of `RECORDS` calls by 50 principals to 5 APIs; one call in 20 refused by one of
/// three rules, and one principal (`key:rare`) only in the first 100 records.
fn trail(dir: &std::path::Path, sink: &str) -> Config {
    let path = dir.join(format!("audit.{sink}"));
    let config = Config::parse(
        &format!(
            "[auth]\nrequired = false\n[[apis]]\nname = \"a\"\nbase_url = \"https://example.com\"\npaths = [\"/**\"]\n\
             [audit]\nsink = \"{sink}\"\npath = \"{}\"\nbuffer = 200000\n",
            path.display()
        ),
        &|_| None,
    )
    .expect("bench config");
    let errors =
        prometheus::IntCounterVec::new(prometheus::Opts::new("e", "e"), &["kind"]).unwrap();
    let auditor = Auditor::start(&config.audit, errors, None)
        .unwrap()
        .unwrap();
    for i in 0..RECORDS {
        let mut e = AuditEvent::new(
            Door::Proxy,
            None,
            "GET",
            &format!("/api{}/repos/o/r/issues/{i}", i % 5),
        );
        e.principal = if i < 100 && i % 10 == 0 {
            "key:rare".into()
        } else {
            format!("jwt:user{}", i % 50)
        };
        e.roles = vec!["reader".into()];
        e.api = format!("api{}", i % 5);
        e.status = 200;
        e.bytes_out = 1200;
        e.upstream_ms = Some(12.5);
        if i % 20 == 0 {
            e.decision = "deny";
            e.status = 403;
            e.reason = Some("not_permitted");
            e.stage = Some("authorization");
            e.rule = Some(format!("rbac.roles[{}].deny[0]", i % 3));
        }
        auditor.record(e);
    }
    auditor.shutdown();
    config
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    for sink in ["file", "sqlite"] {
        let config = trail(dir.path(), sink);
        let s = &config.audit.sink;
        let q = |f: fn(&mut Query)| {
            let mut q = Query {
                limit: 50,
                ..Query::default()
            };
            f(&mut q);
            q
        };
        let newest = q(|_| {});
        let page = search(s, &newest).unwrap();
        assert_eq!(page.records.len(), 50);
        let after = Query {
            before: page.next,
            ..newest.clone()
        };
        let filtered = q(|q| {
            q.principal = Some("jwt:user7".into());
            q.decision = Some("deny".into());
        });
        let rare = q(|q| q.principal = Some("key:rare".into()));
        assert_eq!(search(s, &rare).unwrap().records.len(), 10);
        let nothing = q(|q| q.rule = Some("rbac.nowhere".into()));
        let mut g = c.benchmark_group(format!("audit_search_{sink}_100k"));
        g.sample_size(20);
        g.bench_function("newest_page", |b| {
            b.iter(|| black_box(search(s, &newest).unwrap()))
        });
        g.bench_function("page_after_cursor", |b| {
            b.iter(|| black_box(search(s, &after).unwrap()))
        });
        g.bench_function("principal_and_decision", |b| {
            b.iter(|| black_box(search(s, &filtered).unwrap()))
        });
        g.bench_function("rare_principal_whole_scan", |b| {
            b.iter(|| black_box(search(s, &rare).unwrap()))
        });
        g.bench_function("no_match_whole_scan", |b| {
            b.iter(|| black_box(search(s, &nothing).unwrap()))
        });
        g.finish();
    }
}

criterion_group!(audit_search, benches);
criterion_main!(audit_search);

//! The audit trail: one hash-chained record per call through either door, flushed on
//! graceful shutdown, checked by `api-gateway-mcp audit verify`.

mod common;
use common::*;

use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

fn audit_path(gw: &Gateway) -> std::path::PathBuf {
    gw.config_path.parent().unwrap().join("audit.jsonl")
}

fn records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// 1,000 concurrent calls across both doors, allowed and refused: exactly 1,000 records after
/// a graceful shutdown, an intact chain, and no secret anywhere in the file.
/// The records of a stopped gateway, from its file or its database.
fn stored_records(gw: &Gateway, sqlite: bool) -> (Vec<Value>, std::path::PathBuf) {
    if !sqlite {
        let p = audit_path(gw);
        return (records(&p), p);
    }
    let p = gw.config_path.parent().unwrap().join("audit.db");
    let conn = rusqlite::Connection::open(&p).unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, prev, hash, event FROM audit ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(json!({
                "seq": r.get::<_, i64>(0)?,
                "prev": r.get::<_, String>(1)?,
                "hash": r.get::<_, String>(2)?,
                "event": serde_json::from_str::<Value>(&r.get::<_, String>(3)?).unwrap(),
            }))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (rows, p)
}

fn verify_store(path: &std::path::Path, sqlite: bool) -> (i32, String) {
    let out = Command::new(bin())
        .args([
            "audit",
            "verify",
            if sqlite { "--sqlite" } else { "--file" },
        ])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_is_audited_once_and_the_chain_verifies() {
    thousand_calls(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_is_audited_once_in_sqlite_too() {
    thousand_calls(true).await;
}

async fn thousand_calls(sqlite: bool) {
    let up = Upstream::start();
    let audit = if sqlite {
        "\n[audit]\nsink = \"sqlite\"\n"
    } else {
        ""
    };
    let mut gw =
        Gateway::start_generated(|(m, p, a)| format!("{}{audit}", test_config(up.port, m, p, a)));
    let token = jwt(json!({"sub": "auditor"}));
    let c = reqwest::Client::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..600 {
        let (c, sem, url, token) = (
            c.clone(),
            sem.clone(),
            gw.proxy_url("/local/x?q=1"),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let req = if i % 6 == 0 {
                c.delete(&url)
            } else {
                c.get(&url)
            };
            req.header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut mcp_tasks = Vec::new();
    for _ in 0..10 {
        let url = gw.mcp_url();
        mcp_tasks.push(tokio::spawn(async move {
            let mut s = McpSession::connect(&url).await;
            let mut refused = 0;
            for j in 0..40 {
                let endpoint = if j % 4 == 0 { "/../etc" } else { "/y" };
                let r = s
                    .call("api_gateway", json!({"api": "local", "endpoint": endpoint}))
                    .await;
                if r["isError"] == true {
                    refused += 1;
                }
            }
            refused
        }));
    }
    let mut denied = 0;
    for t in tasks {
        if t.await.unwrap() == 403 {
            denied += 1;
        }
    }
    for t in mcp_tasks {
        denied += t.await.unwrap();
    }
    assert_eq!(denied, 100 + 100);
    terminate(&mut gw);

    let (recs, path) = stored_records(&gw, sqlite);
    assert_eq!(
        recs.len(),
        1000,
        "one record per call, none lost at shutdown"
    );
    let count = |door: &str, decision: &str| {
        recs.iter()
            .filter(|r| r["event"]["door"] == door && r["event"]["decision"] == decision)
            .count()
    };
    assert_eq!(count("proxy", "allow"), 500);
    assert_eq!(count("proxy", "deny"), 100);
    assert_eq!(count("mcp", "allow"), 300);
    assert_eq!(count("mcp", "deny"), 100);
    let sample = recs
        .iter()
        .find(|r| r["event"]["door"] == "proxy" && r["event"]["decision"] == "allow")
        .unwrap();
    let e = &sample["event"];
    assert_eq!(e["principal"], "jwt:auditor");
    assert_eq!(e["api"], "local");
    assert_eq!(e["path"], "/local/x?q=*", "query values are redacted");
    assert_eq!(e["status"], 200);
    assert_eq!(e["client_ip"], "127.0.0.1");
    assert!(e["upstream_ms"].as_f64().is_some() && e["bytes_out"].as_u64().unwrap() > 0);
    let denial = recs
        .iter()
        .find(|r| r["event"]["door"] == "mcp" && r["event"]["decision"] == "deny")
        .unwrap();
    assert_eq!(denial["event"]["error"], "invalid_endpoint");
    assert_eq!(denial["event"]["tool"], "api_gateway");

    let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).to_string();
    assert!(
        !text.contains(&token) && !text.contains(SECRET),
        "no secret is audited"
    );
    let (code, out) = verify_store(&path, sqlite);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1000 records"), "{out}");
}

/// SQLite: the records are queryable with SQL, and the verifier catches an edited row, a
/// deleted row and two swapped rows.
#[tokio::test]
async fn the_sqlite_store_is_queryable_and_tampering_is_caught() {
    let up = Upstream::start();
    let mut gw = Gateway::start_generated(|(m, p, a)| {
        format!(
            "{}\n[audit]\nsink = \"sqlite\"\nretention = \"30d\"\n",
            test_config(up.port, m, p, a)
        )
    });
    let c = reqwest::Client::new();
    for _ in 0..8 {
        assert_eq!(get_status(&c, &gw.proxy_url("/local/x")).await, 200);
    }
    assert_eq!(get_status(&c, &gw.proxy_url("/local/secret/x")).await, 403);
    terminate(&mut gw);
    let db = gw.config_path.parent().unwrap().join("audit.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let denied: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE json_extract(event, '$.decision') = 'deny'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(denied, 1);
    drop(conn);
    assert_eq!(verify_store(&db, true).0, 0);

    let dir = tempfile::tempdir().unwrap();
    let tampered = |name: &str, sql: &str| {
        let copy = dir.path().join(name);
        std::fs::copy(&db, &copy).unwrap();
        rusqlite::Connection::open(&copy)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        verify_store(&copy, true)
    };
    let (code, out) = tampered(
        "edited.db",
        "UPDATE audit SET event = replace(event, '\"status\":200', '\"status\":500') WHERE seq = 5;",
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record 5") && out.contains("edited"), "{out}");
    let (code, out) = tampered("deleted.db", "DELETE FROM audit WHERE seq = 7;");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("record 8"), "{out}");
    let (code, out) = tampered(
        "swapped.db",
        "UPDATE audit SET seq = -3 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = 4; \
         UPDATE audit SET seq = 4 WHERE seq = -3;",
    );
    assert_eq!(code, 1, "{out}");
}

/// The verifier names the first bad record when one is edited, dropped or two are swapped.
#[tokio::test]
async fn the_verifier_catches_edits_drops_and_swaps() {
    let up = Upstream::start();
    let mut gw = Gateway::start(up.port);
    let c = reqwest::Client::new();
    for _ in 0..6 {
        assert_eq!(get_status(&c, &gw.proxy_url("/local/x")).await, 200);
    }
    terminate(&mut gw);
    let path = audit_path(&gw);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(verify_store(&path, false).0, 0);

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, ls: Vec<String>| {
        let p = dir.path().join(name);
        std::fs::write(&p, ls.join("\n") + "\n").unwrap();
        p
    };
    let owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();

    let mut edited = owned.clone();
    edited[2] = edited[2].replace("\"status\":200", "\"status\":500");
    assert_ne!(edited[2], owned[2]);
    let (code, out) = verify_store(&write("edited.jsonl", edited), false);
    assert_eq!((code, out.contains("line 3")), (1, true), "{out}");
    assert!(out.contains("edited"), "{out}");

    let mut dropped = owned.clone();
    dropped.remove(3);
    let (code, out) = verify_store(&write("dropped.jsonl", dropped), false);
    assert_eq!((code, out.contains("line 4")), (1, true), "{out}");

    let mut swapped = owned.clone();
    swapped.swap(1, 4);
    let (code, out) = verify_store(&write("swapped.jsonl", swapped), false);
    assert_eq!((code, out.contains("line 2")), (1, true), "{out}");
}

/// A sink that cannot be written: with on_failure = "block" calls are refused (503
/// audit_unavailable); with "continue" they pass and every lost record is counted.
#[tokio::test]
async fn an_unwritable_sink_blocks_or_is_counted() {
    let up = Upstream::start();
    let c = reqwest::Client::new();
    for mode in ["block", "continue"] {
        let gw = Gateway::start_generated(|ports| {
            format!(
                "{}[audit]\npath = \"/nonexistent-dir-for-agm-tests/audit.jsonl\"\non_failure = \"{mode}\"\n\n{}",
                server_section(ports, 1),
                loopback_get_api("local", up.port, "")
            )
        });
        // The first record fails to write; wait until the writer has noticed.
        let _ = get_status(&c, &gw.proxy_url("/local/x")).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(&gw, "api_audit_sink_errors_total{kind=\"write_failed\"}").await < 1.0 {
            assert!(
                Instant::now() < deadline,
                "{mode}: the write failure was not counted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = c.get(gw.proxy_url("/local/x")).send().await.unwrap();
        if mode == "block" {
            assert_eq!(r.status(), 503);
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"], "audit_unavailable");
            let mut s = McpSession::connect(&gw.mcp_url()).await;
            let r = s
                .call("api_gateway", json!({"api": "local", "endpoint": "/x"}))
                .await;
            assert_eq!(r["structuredContent"]["error"], "audit_unavailable", "{r}");
        } else {
            assert_eq!(r.status(), 200);
        }
    }
}

/// A caller's W3C `traceparent` continues upstream (same trace id, a new span id) on both
/// doors, and the trace id is in the audit record; without one, a new trace is started.
#[tokio::test]
async fn trace_context_reaches_the_upstream_and_the_audit_record() {
    let up = Upstream::start();
    let mut gw = Gateway::start(up.port);
    let c = reqwest::Client::new();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    let r = c
        .get(gw.proxy_url("/local/traced"))
        .header("traceparent", &tp)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut s = McpSession::connect_with(&gw.mcp_url(), &[("traceparent", &tp)]).await;
    let r = s
        .call(
            "api_gateway",
            json!({"api": "local", "endpoint": "/traced-mcp"}),
        )
        .await;
    assert_eq!(r["isError"], false);
    assert_eq!(get_status(&c, &gw.proxy_url("/local/untraced")).await, 200);

    let seen = up.seen();
    for target in ["/base/traced", "/base/traced-mcp"] {
        let req = seen.iter().find(|s| s.target == target).unwrap();
        let got = req.header("traceparent").unwrap();
        assert!(got.starts_with(&format!("00-{trace}-")), "{target}: {got}");
        assert_ne!(got, tp, "{target}: the hop has its own span id");
    }
    let fresh = seen.iter().find(|s| s.target == "/base/untraced").unwrap();
    let fresh_tp = fresh.header("traceparent").unwrap().to_string();
    assert_eq!(fresh_tp.len(), 55, "{fresh_tp}");

    terminate(&mut gw);
    let recs = records(&audit_path(&gw));
    let traced: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event"]["trace_id"] == trace)
        .collect();
    assert_eq!(traced.len(), 2, "both doors record the caller's trace id");
    assert!(recs
        .iter()
        .any(|r| r["event"]["trace_id"].as_str() == Some(&fresh_tp[3..35])));
}

//! Response shaping on a 5 MB JSON answer (issue 21, target 6: at most 50 ms of CPU and at
//! most twice the answer's size in extra memory): the time per answer under criterion, and
//! the extra memory measured by a counting allocator (the most bytes held at once while one
//! answer is shaped, over what was held before). Three APIs: the defaults (every secret
//! format redacted, the 40,000-character budget), the defaults with a credential whose echoes
//! are masked, and one that also redacts a JSONPath (which needs the whole answer parsed).
//! Run with `cargo bench --bench shaping`; figures in BENCHMARKS.md.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use api_gateway_mcp::config::{Api, Config};
use api_gateway_mcp::egress::{shape, Body};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};

/// The system allocator, counting the bytes it holds and the most it has held.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = HELD.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                HELD.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A 5 MB JSON answer shaped like a search API's: an object with a count and an array of
/// items, each with strings, numbers, a nested owner and a list of labels.
fn answer() -> Bytes {
    let mut items = Vec::new();
    let mut size = 0;
    let mut i = 0;
    while size < 5_000_000 {
        let item = serde_json::json!({
            "id": 100_000 + i,
            "name": format!("project-{i}"),
            "full_name": format!("owner{}/project-{i}", i % 97),
            "description": "A repository whose description is long enough to be cut by the budget when many are listed",
            "owner": {"login": format!("owner{}", i % 97), "id": i % 97, "email": format!("owner{}@example.com", i % 97)},
            "stars": i * 7 % 1000,
            "labels": ["rust", "gateway", "mcp"],
            "private": i % 5 == 0,
        });
        size += item.to_string().len() + 1;
        items.push(item);
        i += 1;
    }
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({"total_count": items.len(), "items": items}))
            .unwrap(),
    )
}

fn apis() -> Vec<Api> {
    let config = Config::parse(
        "[auth]\nrequired = false\n\
         [[apis]]\nname = \"plain\"\nbase_url = \"https://example.com\"\npaths = [\"/**\"]\n\
         [[apis]]\nname = \"credential\"\nbase_url = \"https://example.com\"\npaths = [\"/**\"]\n\
         credentials = { header = \"Authorization\", value = \"Bearer s3cr3t-token-0123456789\" }\n\
         [[apis]]\nname = \"redacting\"\nbase_url = \"https://example.com\"\npaths = [\"/**\"]\n\
         [apis.response]\nredact = { patterns = [\"github\", \"jwt\", \"aws\", \"pem\"], json_paths = [\"$..email\"] }\n",
        &|_| None,
    )
    .expect("bench config");
    config.apis.iter().map(|a| (**a).clone()).collect()
}

fn body(bytes: &Bytes) -> Body<'static> {
    Body {
        bytes: bytes.clone(),
        content_type: Some("application/json"),
        read_cut: false,
        declared_len: None,
    }
}

fn shaping(c: &mut Criterion) {
    let bytes = answer();
    for api in apis() {
        // The extra memory of one shape: the most held at once, over what was held before.
        let before = HELD.load(Relaxed);
        PEAK.store(before, Relaxed);
        let shaped = shape(&api, body(&bytes), None).expect("shapes");
        let extra = PEAK.load(Relaxed) - before;
        println!(
            "shaping {} ({} bytes of JSON): {} chars returned, extra memory {:.2} MB ({:.2}x the answer)",
            api.name,
            bytes.len(),
            shaped.data.to_string().len(),
            extra as f64 / 1e6,
            extra as f64 / bytes.len() as f64
        );
        drop(shaped);
        c.bench_function(&format!("shape 5 MB JSON, {}", api.name), |b| {
            b.iter(|| shape(black_box(&api), body(&bytes), None).expect("shapes"))
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = shaping
}
criterion_main!(benches);

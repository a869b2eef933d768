//! The floor under the proxy door: a Pingora 0.9 proxy that does nothing but forward, with
//! the same thread count and release profile as the gateway. `benches/load.sh` measures it
//! next to nginx and the proxy door, so the load table shows which part of the gap to nginx
//! is Pingora's own and which is the gateway's policy work.
//!
//!   cargo build --release --example pingora_floor
//!   target/release/examples/pingora_floor LISTEN UPSTREAM [THREADS]  (e.g. 127.0.0.1:18383 127.0.0.1:18181 2)
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct Forward(String);

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.0.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: pingora_floor LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(2);
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Forward(upstream));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}

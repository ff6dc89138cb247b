//! A real `redis-server` for tests of the Redis store: started on a free loopback port in a
//! temporary directory, stopped on drop. `LLMUX_TEST_REDIS_URL` points tests at a server that
//! is already running instead. Without either, [`RedisServer::start`] returns `None` (the test
//! skips) unless `CI` is set, where it panics: under CI, Redis tests must run.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server process owned by a test.
pub struct RedisServer {
    url: String,
    port: u16,
    child: Option<Child>,
    dir: Option<std::path::PathBuf>,
}

fn free_port() -> Option<u16> {
    Some(
        TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port(),
    )
}

#[allow(clippy::disallowed_methods)]
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl RedisServer {
    /// A server to test against, or `None` when none can be had outside CI.
    ///
    /// # Panics
    /// Under `CI` when no server can be started.
    #[allow(
        clippy::panic,
        reason = "test support: under CI a missing Redis must fail the test"
    )]
    pub fn start() -> Option<RedisServer> {
        if let Some(url) = env("LLMUX_TEST_REDIS_URL") {
            return Some(RedisServer {
                url,
                port: 0,
                child: None,
                dir: None,
            });
        }
        RedisServer::start_owned()
    }

    /// A server of this test's own, which it may stop and restart (outage tests), even when
    /// `LLMUX_TEST_REDIS_URL` names a shared one.
    ///
    /// # Panics
    /// Under `CI` when `redis-server` is not installed.
    #[allow(
        clippy::panic,
        reason = "test support: under CI a missing Redis must fail the test"
    )]
    pub fn start_owned() -> Option<RedisServer> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            if env("CI").is_some() {
                panic!(
                    "CI is set but redis-server is not installed and LLMUX_TEST_REDIS_URL is unset"
                );
            }
            eprintln!("skipped: no redis-server (install it or set LLMUX_TEST_REDIS_URL)");
            return None;
        }
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("llmux-redis-{port}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let mut s = RedisServer {
            url: format!("redis://127.0.0.1:{port}/0"),
            port,
            child: None,
            dir: Some(dir),
        };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        let Some(dir) = &self.dir else { return };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        self.child = child;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this process owns the server (and so can stop and start it).
    pub fn owned(&self) -> bool {
        self.dir.is_some()
    }

    /// Kill the server (an outage). Only for owned servers.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port (empty: persistence is off).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

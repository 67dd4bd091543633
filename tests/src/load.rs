//! A load generator for the zero-downtime tests: plain HTTP/1.1 over
//! `std::net`, one connection per request (`Connection: close`), so every
//! request is judged on its own and none rides on a keep-alive connection a
//! server closes at the wrong moment.
//!
//! [`Load::start`] runs, until [`Load::stop`]:
//! - `rate` requests per second through the frontend, cycling over `paths`,
//!   each response checked (status 200 and, for JSON health, `"status":"ok"`),
//!   in an open loop: each request leaves when it is due, not when the one
//!   before it has been answered, so a slow target (or a busy test machine)
//!   shows as latency in the report rather than as a lower rate;
//! - one slow request after another to `slow_path` (the example app's
//!   `/api/slow?ms=2000`), so that one is always in flight and must complete.
//!
//! The report counts failures and the longest gap between two successful
//! responses. Bounded: at most `rate × seconds` requests, to one address of
//! this machine or of a test host.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request's result.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, from the start of the load.
    pub at: Duration,
    /// How long it took.
    pub took: Duration,
    /// The path.
    pub path: String,
    /// `None` when it succeeded, else what went wrong.
    pub error: Option<String>,
}

/// What a run of load saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every request of the steady stream.
    pub samples: Vec<Sample>,
    /// Every slow request.
    pub slow: Vec<Sample>,
    /// How long the load ran.
    pub duration: Duration,
}

impl Report {
    /// Failed requests of the steady stream.
    pub fn failures(&self) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.error.is_some()).collect()
    }

    /// Failed slow requests.
    pub fn slow_failures(&self) -> Vec<&Sample> {
        self.slow.iter().filter(|s| s.error.is_some()).collect()
    }

    /// Slow requests that completed.
    pub fn slow_completed(&self) -> usize {
        self.slow.iter().filter(|s| s.error.is_none()).count()
    }

    /// The longest time between two successful responses of the steady stream.
    pub fn longest_gap(&self) -> Duration {
        let mut ends: Vec<Duration> =
            self.samples.iter().filter(|s| s.error.is_none()).map(|s| s.at + s.took).collect();
        ends.sort();
        ends.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }

    /// Requests per second actually sent.
    pub fn rate(&self) -> f64 {
        self.samples.len() as f64 / self.duration.as_secs_f64().max(0.001)
    }

    /// The median and the longest time a request of the steady stream took.
    pub fn latency(&self) -> (Duration, Duration) {
        let mut took: Vec<Duration> = self.samples.iter().map(|s| s.took).collect();
        took.sort();
        (took.get(took.len() / 2).copied().unwrap_or_default(), took.last().copied().unwrap_or_default())
    }

    /// One line for the test's output and the figures.
    pub fn summary(&self) -> String {
        let (median, slowest) = self.latency();
        format!(
            "{} requests in {:.1}s ({:.1}/s), {} failed; took {:.0} ms median, {:.0} ms at most; longest gap between successes {:.0} ms; slow requests: {} completed, {} failed",
            self.samples.len(),
            self.duration.as_secs_f64(),
            self.rate(),
            self.failures().len(),
            median.as_secs_f64() * 1000.0,
            slowest.as_secs_f64() * 1000.0,
            self.longest_gap().as_secs_f64() * 1000.0,
            self.slow_completed(),
            self.slow_failures().len()
        )
    }

    /// The failures, one per line (at most 20).
    pub fn failure_lines(&self) -> String {
        self.failures()
            .iter()
            .chain(self.slow_failures().iter())
            .take(20)
            .map(|s| format!("  at {:.2}s {}: {}", s.at.as_secs_f64(), s.path, s.error.as_deref().unwrap_or("")))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    slow: Arc<Mutex<Vec<Sample>>>,
    started: Instant,
}

/// GETs `path` from `addr` with `Host: host`; `Ok(())` when the answer is a
/// 200 whose body passes the check.
pub fn get_once(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cultivate-e2e-load\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        let first = text.lines().next().unwrap_or("(empty response)");
        return Err(format!("status {first:?}"));
    }
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    if body.is_empty() {
        return Err("empty body".into());
    }
    if path.contains("/health") && !body.contains("\"status\":\"ok\"") {
        return Err(format!("unhealthy body: {}", body.chars().take(120).collect::<String>()));
    }
    Ok(())
}

impl Load {
    /// Starts the load against `http://host:port`.
    pub fn start(host: &str, port: u16, paths: &[&str], rate: u32, slow_path: Option<&str>) -> Load {
        let addr = (host, port).to_socket_addrs().ok().and_then(|mut a| a.next()).expect("resolving the load's target");
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let slow = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut threads = Vec::new();
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        // Open loop: request k is due at `started + k × interval`, whatever
        // the answers before it took. Workers take the next due request from
        // one counter, so a slow answer holds back one worker, not the
        // stream; only with every worker waiting on an answer (a mean
        // latency over WORKERS × interval, 640 ms at 25/s) does the stream
        // fall behind, and then the report's rate says so.
        const WORKERS: u64 = 16;
        let next_slot = Arc::new(AtomicU64::new(0));
        for _ in 0..WORKERS {
            let (stop, samples, host, next_slot) = (stop.clone(), samples.clone(), host.to_string(), next_slot.clone());
            let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let k = next_slot.fetch_add(1, Ordering::Relaxed);
                    let due = started + interval * (k as u32);
                    let now = Instant::now();
                    if now < due {
                        std::thread::sleep(due - now);
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let path = &paths[(k as usize) % paths.len()];
                    let t0 = Instant::now();
                    let r = get_once(addr, &host, path, Duration::from_secs(10));
                    let sample = Sample { at: t0 - started, took: t0.elapsed(), path: path.clone(), error: r.err() };
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
                    // Hard bound: never more than 10 minutes of load.
                    if started.elapsed() > Duration::from_secs(600) {
                        break;
                    }
                }
            }));
        }
        if let Some(slow_path) = slow_path {
            let (stop, slow, host, path) = (stop.clone(), slow.clone(), host.to_string(), slow_path.to_string());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(600) {
                    let t0 = Instant::now();
                    let r = get_once(addr, &host, &path, Duration::from_secs(20));
                    let failed = r.is_err();
                    slow.lock().unwrap_or_else(|e| e.into_inner()).push(Sample {
                        at: t0 - started,
                        took: t0.elapsed(),
                        path: path.clone(),
                        error: r.err(),
                    });
                    if failed {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }));
        }
        Load { stop, threads, samples, slow, started }
    }

    /// Stops the load, waits for the requests in flight, and reports.
    pub fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let duration = self.started.elapsed();
        for t in self.threads {
            let _ = t.join();
        }
        let take = |m: &Arc<Mutex<Vec<Sample>>>| std::mem::take(&mut *m.lock().unwrap_or_else(|e| e.into_inner()));
        Report { samples: take(&self.samples), slow: take(&self.slow), duration }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn server(answer: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten().take(50) {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        addr
    }

    #[test]
    fn a_200_with_a_body_passes_and_anything_else_fails() {
        let ok = server("HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}");
        assert_eq!(get_once(ok, "x", "/api/health", Duration::from_secs(2)), Ok(()));
        let bad = server("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad");
        assert!(get_once(bad, "x", "/", Duration::from_secs(2)).unwrap_err().contains("502"));
        let sick = server("HTTP/1.1 200 OK\r\nContent-Length: 18\r\n\r\n{\"status\":\"error\"}");
        assert!(get_once(sick, "x", "/api/health", Duration::from_secs(2)).is_err());
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert!(get_once(closed, "x", "/", Duration::from_secs(2)).is_err(), "nothing listens there");
    }

    #[test]
    fn the_longest_gap_is_between_successes() {
        let s = |at: u64, ok: bool| Sample {
            at: Duration::from_millis(at),
            took: Duration::ZERO,
            path: "/".into(),
            error: (!ok).then(|| "x".to_string()),
        };
        let r = Report {
            samples: vec![s(0, true), s(50, true), s(100, false), s(150, false), s(400, true)],
            ..Report::default()
        };
        assert_eq!(r.longest_gap(), Duration::from_millis(350));
        assert_eq!(r.failures().len(), 2);
    }

    /// A server that answers every connection after `delay`, many at once.
    fn slow_server(delay: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten().take(400) {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    std::thread::sleep(delay);
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                });
            }
        });
        addr
    }

    #[test]
    fn slow_answers_do_not_hold_the_stream_back() {
        // 400 ms an answer: four senders each waiting on its answer would
        // reach 10 requests/s; the open-loop stream keeps its 25.
        let addr = slow_server(Duration::from_millis(400));
        let load = Load::start(&addr.ip().to_string(), addr.port(), &["/"], 25, None);
        std::thread::sleep(Duration::from_secs(3));
        let report = load.stop();
        assert!(report.failures().is_empty(), "{}", report.failure_lines());
        assert!(report.rate() >= 20.0, "{}", report.summary());
        assert!(report.latency().0 >= Duration::from_millis(400), "{}", report.summary());
    }
}

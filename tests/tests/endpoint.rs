//! The agent's `/metrics` endpoint against clients that try to hold it: a client that sends half a request (or
//! trickles one) is cut off after the header timeout while others are served; connections past the cap are closed
//! at once and the endpoint serves again when the held ones are gone; out of descriptors, the accept loop backs off
//! instead of spinning and serves again once descriptors are free; kept-alive connections are closed when idle or
//! old, never in the middle of a response.
//!
//! Each test runs its own agent with an `--include` that matches no process, so that only the endpoint works.

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use e2e::agent::Agent;

/// serve.rs's HEADER_READ_TIMEOUT: the time a client has to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// serve.rs's MAX_CONNECTIONS: connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// serve.rs's CONNECTION_LIFETIME: when a kept-alive connection is closed after its response in flight.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// serve.rs's ACCEPT_BACKOFF: the pause after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Slack for a loaded machine on top of the agent's deadlines.
const MARGIN: Duration = Duration::from_secs(3);
/// A scrape while others hold connections must be answered within this: well under the 5 s header timeout, so
/// that a server held up by a slow client (answering only once it is cut off) fails, with room for a loaded
/// machine.
const PROMPT: Duration = Duration::from_secs(3);

/// An agent that traces nothing (its `--include` matches no process): only its endpoint is under test.
fn agent() -> Agent {
    Agent::start(&[&format!(
        "maptrace-endpoint-test-matches-nothing-{}",
        std::process::id()
    )])
}

/// What these tests do to an agent beyond scraping it.
trait Endpoint {
    fn connect(&self) -> TcpStream;
    fn scrape(&self) -> (String, Duration);
    fn scrape_within(&self, within: Duration) -> (String, Duration);
    fn try_scrape(&self) -> Result<(String, Duration), String>;
    fn cpu(&self) -> Duration;
    fn runnable(&self) -> Duration;
    fn descriptors_below(&self, limit: u64) -> u64;
    fn set_descriptor_limit(&self, limit: u64);
}

impl Endpoint for Agent {
    fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port)).expect("connect")
    }

    /// `GET /metrics` on a connection of its own: the body of a 200 response, and how long it took.
    fn scrape(&self) -> (String, Duration) {
        self.try_scrape().unwrap_or_else(|e| panic!("GET /metrics: {e}"))
    }

    /// A scrape answered within `within` of now, retrying those refused (closed without an answer) meanwhile.
    fn scrape_within(&self, within: Duration) -> (String, Duration) {
        let start = Instant::now();
        loop {
            match self.try_scrape() {
                Ok((body, _)) if start.elapsed() < within => return (body, start.elapsed()),
                Ok(_) => panic!("answered only after {:?}", start.elapsed()),
                Err(e) => assert!(start.elapsed() < within, "no answer within {within:?}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_scrape(&self) -> Result<(String, Duration), String> {
        let start = Instant::now();
        let mut s = self.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        if !head.starts_with("HTTP/1.0 200") {
            return Err(format!("answered {head:?}"));
        }
        Ok((body.to_string(), start.elapsed()))
    }

    /// The agent's user + system CPU time, from /proc/PID/stat.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // The fields after the command name (which may hold spaces) start with the state, field 3.
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// How long the agent's threads were runnable (on a CPU or waiting for one), from /proc/PID/task/*/schedstat:
    /// unlike CPU time, a busy loop shows as all of the time however loaded the machine is.
    fn runnable(&self) -> Duration {
        let ns: u64 = std::fs::read_dir(format!("/proc/{}/task", self.pid()))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
            .map(|stat| {
                stat.split_whitespace()
                    .take(2)
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum();
        Duration::from_nanos(ns)
    }

    /// The agent's descriptors numbered below `limit` (the ones RLIMIT_NOFILE counts against).
    fn descriptors_below(&self, limit: u64) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .filter(|&fd| fd < limit)
            .count() as u64
    }

    fn set_descriptor_limit(&self, limit: u64) {
        let new = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: `new` is a valid rlimit and the old value is not asked for.
        let rc = unsafe { libc::prlimit(self.pid() as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    }
}

/// The value of an unlabelled sample in the classic text format.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Waits up to `within` for the peer to close `s`, reading (and discarding) whatever it sends first; the time it
/// took, or None if the connection is still open.
fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.checked_sub(start.elapsed())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(start.elapsed()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// Whether the peer has not closed `s` (nothing to read, no end of stream), without waiting.
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let open = match s.peek(&mut [0u8; 1]) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
        Err(e) => panic!("peeking: {e}"),
    };
    s.set_nonblocking(false).unwrap();
    open
}

/// One HTTP/1.1 response read from a kept-alive connection (by its Content-Length): its status line, or None if
/// the connection was closed before any of a response came. Closed in the middle of one is a failure.
fn read_response(s: &mut TcpStream) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let mut more = |s: &mut TcpStream, got: &mut Vec<u8>| -> bool {
        match s.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) => panic!("reading a response: {e}"),
        }
    };
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !more(s, &mut got) {
            assert!(
                got.is_empty(),
                "closed in a response's head: {:?}",
                String::from_utf8_lossy(&got)
            );
            return None;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    while got.len() < head_end + length {
        assert!(more(s, &mut got), "closed in a response's body: {head:?}");
    }
    assert_eq!(got.len(), head_end + length, "more than one response: {head:?}");
    Some(head.lines().next().unwrap_or_default().to_string())
}

#[test]
fn a_slow_client_is_cut_off_and_a_scrape_meanwhile_is_prompt() {
    let agent = agent();
    // Half a request line, then nothing.
    let opened = Instant::now();
    let mut silent = agent.connect();
    silent.write_all(b"GET /metr").unwrap();
    // A whole head never comes either, one byte every 500 ms: each read succeeds, only a deadline on the whole
    // head cuts this one off.
    let mut trickle = agent.connect();
    trickle
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .unwrap();
    let trickler = {
        let mut trickle = trickle.try_clone().unwrap();
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < HEADER_READ_TIMEOUT + MARGIN * 2 && trickle.write_all(b"a").is_ok() {
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let (body, took) = agent.scrape();
    eprintln!("a scrape beside them: {took:?}");
    assert!(
        took < PROMPT,
        "a scrape took {took:?} while slow clients were connected"
    );
    assert!(body.contains("maptrace_agent_targets"), "{body}");
    for (what, s) in [
        ("half a request line", &mut silent),
        ("a byte every 500 ms", &mut trickle),
    ] {
        let closed = closed_within(s, (HEADER_READ_TIMEOUT + MARGIN).saturating_sub(opened.elapsed()));
        assert!(
            closed.is_some(),
            "{what} held its connection for {:?}",
            opened.elapsed()
        );
        eprintln!("{what}: closed {:?} after it connected", opened.elapsed());
    }
    trickler.join().unwrap();
}

#[test]
fn connections_past_the_cap_are_closed_at_once_and_the_held_ones_time_out() {
    let agent = agent();
    let extra = 4;
    // Idle: connected, nothing sent. Accepted in the order they connected.
    let mut idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + extra).map(|_| agent.connect()).collect();
    let opened = Instant::now();
    let closed = |idle: &[TcpStream]| -> Vec<usize> { (0..idle.len()).filter(|&i| !still_open(&idle[i])).collect() };
    while closed(&idle).len() < extra && opened.elapsed() < MARGIN {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        closed(&idle),
        (MAX_CONNECTIONS..MAX_CONNECTIONS + extra).collect::<Vec<_>>(),
        "the connections past the first {MAX_CONNECTIONS} are closed as soon as they are accepted, the others held"
    );
    // While they are held, a scrape is refused: its connection is closed without a response.
    let mut refused = agent.connect();
    // (Closed at once, so the request may find it closed already.)
    let _ = refused.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    refused.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answer = Vec::new();
    match refused.read_to_end(&mut answer) {
        Ok(_) => assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer)),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    eprintln!("a scrape with {MAX_CONNECTIONS} held: closed without a response");
    // The held ones are closed by the header timeout, and then the endpoint serves again.
    for (i, s) in idle.iter_mut().enumerate().take(MAX_CONNECTIONS) {
        let left = (HEADER_READ_TIMEOUT + MARGIN).saturating_sub(opened.elapsed());
        assert!(
            closed_within(s, left).is_some(),
            "idle connection {i} still open {:?} after it was opened",
            opened.elapsed()
        );
    }
    let (body, took) = agent.scrape();
    eprintln!(
        "held connections closed by the agent {:?} after they opened; a scrape then: {took:?}",
        opened.elapsed()
    );
    assert!(took < PROMPT, "{took:?}");
    assert_eq!(
        sample(&body, "maptrace_agent_http_refused_connections_total"),
        (extra + 1) as f64
    );
    // Held again, then closed by the clients: the slots are free as soon as the agent sees them closed (a scrape
    // accepted before that is refused, and retried).
    let held: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| agent.connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    let (_, took) = agent.scrape_within(PROMPT);
    eprintln!("{MAX_CONNECTIONS} held then closed by the clients: a scrape answered {took:?} later");
}

#[test]
fn out_of_descriptors_the_agent_backs_off_then_serves_again() {
    let agent = agent();
    // A few descriptors left, far fewer than MAX_CONNECTIONS, so accept fails (EMFILE) before the cap is reached.
    let limit = agent.descriptors_below(1024) + 4;
    agent.set_descriptor_limit(limit);
    let free = limit - agent.descriptors_below(limit);
    assert!(
        free < MAX_CONNECTIONS as u64,
        "{free} descriptors free under the limit {limit}"
    );
    // The kernel completes these connections (its backlog) whether or not the agent can accept them.
    let held: Vec<TcpStream> = (0..2 * MAX_CONNECTIONS).map(|_| agent.connect()).collect();
    let full = Instant::now();
    while agent.descriptors_below(limit) < limit {
        assert!(full.elapsed() < MARGIN, "the agent's descriptors never ran out");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (cpu, runnable) = (agent.cpu(), agent.runnable());
    std::thread::sleep(Duration::from_secs(2));
    let (cpu, runnable) = (agent.cpu() - cpu, agent.runnable() - runnable);
    eprintln!("over 2 s out of descriptors: {cpu:?} of CPU, runnable {runnable:?}");
    // Still out of descriptors at the end (a slot freed by the agent's own /proc scan is taken by the next
    // accept, within ACCEPT_BACKOFF).
    let end = Instant::now();
    while agent.descriptors_below(limit) < limit {
        assert!(
            end.elapsed() < Duration::from_millis(500),
            "descriptors were free again during the measurement"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        cpu < Duration::from_millis(500) && runnable < Duration::from_millis(500),
        "{cpu:?} of CPU in 2 s, runnable {runnable:?}: the accept loop spins"
    );
    let backlog = held.len() as u32;
    drop(held);
    // The limit stays low: with a descriptor or two free, the agent accepts about one connection per
    // ACCEPT_BACKOFF, and the closed connections ahead of the scrape in the backlog go first.
    let (body, took) = agent.scrape_within(MARGIN + ACCEPT_BACKOFF * backlog);
    eprintln!("serving again {took:?} after the connections were closed");
    assert!(sample(&body, "maptrace_agent_http_accept_errors_total") > 0.0, "{body}");
}

#[test]
fn a_kept_alive_connection_is_closed_when_idle_or_old_never_mid_response() {
    let agent = agent();
    let request = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n";
    // Kept alive between requests that come sooner than the header timeout…
    let mut s = agent.connect();
    for _ in 0..2 {
        s.write_all(request).unwrap();
        assert_eq!(read_response(&mut s).as_deref(), Some("HTTP/1.1 200 OK"));
        std::thread::sleep(Duration::from_secs(1));
    }
    // …closed when idle for longer (a scraper reconnects for its next request).
    assert!(
        closed_within(&mut s, HEADER_READ_TIMEOUT + MARGIN).is_some(),
        "an idle kept-alive connection stayed open"
    );
    // A connection busy with requests is closed after its lifetime, between two whole responses.
    let opened = Instant::now();
    let mut s = agent.connect();
    let mut answered = 0;
    loop {
        if s.write_all(request).is_err() {
            break;
        }
        match read_response(&mut s) {
            Some(status) => assert_eq!(status, "HTTP/1.1 200 OK"),
            None => break,
        }
        answered += 1;
        assert!(
            opened.elapsed() < CONNECTION_LIFETIME + MARGIN,
            "a busy connection open for {:?}",
            opened.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "a busy connection closed after {:?}, {answered} responses",
        opened.elapsed()
    );
    assert!(answered >= 40, "closed after only {answered} responses");
}

//! The `herald` binary as a user runs it: `serve` on a free port, `tail` against it, and the
//! errors of both. Every child is killed when its guard drops; every wait has a deadline.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use herald_core::event::{Event, EventKind, ServerMessage, decode};

const HERALD: &str = env!("CARGO_BIN_EXE_herald");
const DEADLINE: Duration = Duration::from_secs(30);

/// Kills (and reaps) the child when dropped, whatever the test did.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `herald serve`, with the URL it printed.
struct Server {
    child: ChildGuard,
    url: String,
    /// The rest of its stdout, kept open so the server never writes to a closed pipe.
    _stdout: mpsc::Receiver<String>,
}

fn serve(args: &[&str]) -> Server {
    let mut child = ChildGuard(
        Command::new(HERALD)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn herald serve"),
    );
    let lines = lines_of(child.0.stdout.take().expect("stdout"));
    let first = lines
        .recv_timeout(DEADLINE)
        .expect("herald serve prints its URL");
    let url = first
        .strip_prefix("herald: streaming on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
        .to_owned();
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/ws/events"), "{url}");
    assert!(!url.contains(":0/"), "the real port is printed: {url}");
    Server {
        child,
        url,
        _stdout: lines,
    }
}

fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn read_all(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Waits (bounded) for `child` to exit and collects its output.
fn finish(mut child: ChildGuard) -> Finished {
    let stdout = read_all(child.0.stdout.take().expect("stdout piped"));
    let stderr = read_all(child.0.stderr.take().expect("stderr piped"));
    let status = wait_status(&mut child);
    Finished {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Waits, at most [`DEADLINE`], for `child` to exit.
fn wait_status(child: &mut ChildGuard) -> ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "herald did not exit in time");
        thread::sleep(Duration::from_millis(10));
    }
}

fn spawn_herald(args: &[&str]) -> ChildGuard {
    ChildGuard(
        Command::new(HERALD)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald"),
    )
}

fn herald(args: &[&str]) -> Finished {
    finish(spawn_herald(args))
}

fn decode_line(line: &str) -> ServerMessage {
    decode(&mut line.as_bytes().to_vec()).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn event_of(line: &str) -> Event {
    match decode_line(line) {
        ServerMessage::Event { event, seq: None } => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn block_number(event: &Event) -> u64 {
    match event {
        Event::BlockCreated(b) | Event::BlockAdded(b) | Event::BlockFinalised(b) => b.block_number,
        other => panic!("not a block event: {other:?}"),
    }
}

/// Asserts that `events` are consecutive block events of `cycle`, starting anywhere in it.
fn assert_block_cycle(events: &[Event], cycle: &[EventKind]) {
    let first = events.first().expect("block events");
    let mut at = cycle
        .iter()
        .position(|k| *k == first.kind())
        .unwrap_or_else(|| panic!("unexpected block event {:?}", first.kind()));
    let mut number = block_number(first);
    for event in events {
        assert_eq!(event.kind(), cycle[at], "{events:?}");
        assert_eq!(block_number(event), number);
        at += 1;
        if at == cycle.len() {
            at = 0;
            number += 1;
        }
    }
}

#[test]
fn tail_json_shows_the_boot_lifecycle_then_blocks() {
    let server = serve(&["--role", "boot", "--rate", "200", "--validators", "3"]);
    let out = herald(&["tail", &server.url, "--count", "20", "--json"]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 21, "started + 20 events: {}", out.stdout);
    assert_eq!(lines[0], r#"{"event":"started","schema-version":1}"#);
    assert_eq!(decode_line(lines[0]), ServerMessage::Started);
    let events: Vec<Event> = lines[1..].iter().map(|l| event_of(l)).collect();
    use EventKind::*;
    let kinds: Vec<EventKind> = events.iter().map(Event::kind).collect();
    assert_eq!(
        kinds[..7],
        [
            NodeStarted,
            SentUnapprovedBlock,
            BlockApprovalReceived,
            BlockApprovalReceived,
            BlockApprovalReceived,
            SentApprovedBlock,
            EnteredRunningState,
        ]
    );
    let Event::NodeStarted { address } = &events[0] else {
        unreachable!()
    };
    assert!(address.starts_with("rnode://"), "{address}");
    // Every ceremony event carries the same full genesis hash.
    let Event::EnteredRunningState {
        block_hash: genesis,
    } = &events[6]
    else {
        unreachable!()
    };
    assert_eq!(genesis.len(), 64);
    for event in &events[1..6] {
        match event {
            Event::SentUnapprovedBlock { block_hash }
            | Event::SentApprovedBlock { block_hash }
            | Event::BlockApprovalReceived { block_hash, .. } => assert_eq!(block_hash, genesis),
            other => panic!("{other:?}"),
        }
    }
    assert_block_cycle(&events[7..], &[BlockCreated, BlockAdded, BlockFinalised]);
}

#[test]
fn tail_json_shows_the_readonly_lifecycle_then_blocks() {
    let server = serve(&["--role", "readonly", "--rate", "200", "--seed", "5"]);
    let out = herald(&["tail", &server.url, "--count", "9", "--json"]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 10, "{}", out.stdout);
    assert_eq!(decode_line(lines[0]), ServerMessage::Started);
    let events: Vec<Event> = lines[1..].iter().map(|l| event_of(l)).collect();
    use EventKind::*;
    let kinds: Vec<EventKind> = events.iter().map(Event::kind).collect();
    assert_eq!(
        kinds[..3],
        [NodeStarted, ApprovedBlockReceived, EnteredRunningState]
    );
    // The extractor's `transfers-available` arrive some milliseconds after their block: the
    // simulator's own events keep their cycle, and each transfers event follows its
    // `block-finalised`, in block order.
    let (transfers, blocks): (Vec<Event>, Vec<Event>) = events[3..]
        .iter()
        .cloned()
        .partition(|e| e.kind() == TransfersAvailable);
    assert_block_cycle(&blocks, &[BlockAdded, BlockFinalised]);
    let first_block = block_number(&blocks[0]);
    let mut last = None;
    for (i, event) in events.iter().enumerate() {
        let Event::TransfersAvailable(t) = event else {
            continue;
        };
        let n = t.block_number;
        match events
            .iter()
            .position(|e| matches!(e, Event::BlockFinalised(b) if b.block_number == n))
        {
            Some(finalised) => assert!(finalised < i, "{events:?}"),
            // Finalised before this client subscribed.
            None => assert!(n < first_block, "{events:?}"),
        }
        if let Some(last) = last {
            assert_eq!(n, last + 1, "{events:?}");
        }
        last = Some(n);
    }
    assert_eq!(transfers.len() + blocks.len(), 6);
}

#[test]
fn tail_prints_readable_lines_and_filters() {
    let server = serve(&["--rate", "100"]);
    let out = herald(&["tail", &server.url, "--count", "4"]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", out.stdout);
    assert_eq!(
        lines[0],
        format!("started schema-version=1 url={}", server.url)
    );
    assert!(lines[1].starts_with("#1 node-started "), "{}", lines[1]);
    assert!(lines[1].contains(" address=rnode://"), "{}", lines[1]);
    assert!(
        lines[2].starts_with("#2 approved-block-received hash="),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("#3 entered-running-state   hash="),
        "{}",
        lines[3]
    );
    assert!(lines[4].starts_with("#4 block-"), "{}", lines[4]);
    assert!(lines[4].contains(" number="), "{}", lines[4]);

    // `--events` reaches the server: only finalised blocks, after the replay filtered too.
    let out = herald(&[
        "tail",
        &server.url,
        "--events",
        "block-finalised",
        "--count",
        "3",
        "--json",
    ]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    let numbers: Vec<u64> = lines[1..]
        .iter()
        .map(|l| {
            let event = event_of(l);
            assert_eq!(event.kind(), EventKind::BlockFinalised);
            block_number(&event)
        })
        .collect();
    assert_eq!(numbers[1], numbers[0] + 1);
    assert_eq!(numbers[2], numbers[0] + 2);
}

/// The sequence numbers of `--json --seq` output lines (after `started`), and whether a
/// `lagged` line came first: `(missed, resume_seq)`.
fn seqs_of(lines: &[&str]) -> (Option<(u64, u64)>, Vec<u64>) {
    let mut lagged = None;
    let mut seqs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match decode_line(line) {
            ServerMessage::Event { seq: Some(seq), .. } => seqs.push(seq),
            ServerMessage::Lagged { missed, resume_seq } if i == 0 => {
                lagged = Some((missed, resume_seq));
            }
            other => panic!("line {i}: {other:?} in\n{}", lines.join("\n")),
        }
    }
    (lagged, seqs)
}

#[test]
fn tail_seq_and_from_resume_where_a_tail_stopped() {
    let server = serve(&["--rate", "200", "--capacity", "64"]);
    let out = herald(&["tail", &server.url, "--seq", "--count", "10", "--json"]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(decode_line(lines[0]), ServerMessage::Started);
    let (lagged, seqs) = seqs_of(&lines[1..]);
    assert_eq!(lagged, None);
    assert_eq!(seqs.len(), 10, "{}", out.stdout);
    // The startup replay is 0, 1, 2; live events follow from the join point, in order.
    assert_eq!(seqs[..3], [0, 1, 2]);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for w in seqs[3..].windows(2) {
        assert_eq!(w[1], w[0] + 1, "live events are consecutive: {seqs:?}");
    }

    // Resume right after the last one seen: nothing missed, nothing twice.
    let next = seqs[9] + 1;
    let out = herald(&[
        "tail",
        &server.url,
        "--seq",
        "--from",
        &next.to_string(),
        "--count",
        "80",
        "--json",
    ]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(decode_line(lines[0]), ServerMessage::Started);
    let (lagged, seqs) = seqs_of(&lines[1..]);
    assert_eq!(lagged, None, "still retained: {}", out.stdout);
    assert_eq!(seqs, (next..next + 80).collect::<Vec<_>>());

    // From the first live event, long after it was lapped (64 retained, more than 80
    // published since): one `lagged` line with the exact gap, then consecutive events.
    let out = herald(&[
        "tail",
        &server.url,
        "--seq",
        "--from",
        "3",
        "--count",
        "5",
        "--json",
    ]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let (lagged, seqs) = seqs_of(&lines[1..]);
    let Some((missed, resume_seq)) = lagged else {
        panic!("expected a lagged line first: {}", out.stdout)
    };
    assert_eq!(3 + missed, resume_seq, "{}", out.stdout);
    assert_eq!(seqs, (resume_seq..resume_seq + 5).collect::<Vec<_>>());

    // Readable lines end with the sequence number to resume after.
    let out = herald(&["tail", &server.url, "--seq", "--from", "0", "--count", "3"]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "started schema-version=1 url={}?seq=true&from=0",
            server.url
        )
    );
    for (i, line) in lines[1..].iter().enumerate() {
        assert!(line.ends_with(&format!(" seq={i}")), "{line}");
    }
}

#[test]
fn tail_stats_reports_each_second_and_a_total() {
    // 3 replayed events, then 57 live ones at 50/s: more than a second of stream.
    let server = serve(&["--rate", "50"]);
    let out = herald(&["tail", &server.url, "--count", "60", "--stats"]);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let (last, ticks) = lines.split_last().expect("output");
    assert_eq!(*last, "total: 60 events, 0 lagged notices, 0 missed");
    assert!(!ticks.is_empty(), "{}", out.stdout);
    for line in ticks {
        let rest = line
            .strip_prefix("stats: ")
            .unwrap_or_else(|| panic!("{line}"));
        assert!(rest.contains(" events/s, "), "{line}");
        assert!(rest.ends_with(" lagged notices, 0 missed"), "{line}");
    }
}

#[test]
fn serve_shuts_down_gracefully_on_sigterm() {
    let mut server = serve(&["--rate", "20"]);
    let mut tail = spawn_herald(&["tail", &server.url, "--json"]);
    let stdout = lines_of(tail.0.stdout.take().expect("stdout piped"));
    let stderr = read_all(tail.0.stderr.take().expect("stderr piped"));
    // Wait until the tail is streaming: started and the 3 replayed events have arrived.
    let deadline = Instant::now() + DEADLINE;
    for _ in 0..4 {
        let left = deadline.saturating_duration_since(Instant::now());
        stdout.recv_timeout(left).expect("tail output");
    }
    let status = Command::new("kill")
        .args(["-TERM", &server.child.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let served = wait_status(&mut server.child);
    assert!(served.success(), "serve exits 0 after SIGTERM: {served:?}");
    let tailed = wait_status(&mut tail);
    let stderr = stderr.join().expect("stderr reader");
    assert_eq!(tailed.code(), Some(6), "{stderr}");
    assert!(
        stderr.starts_with(
            "herald tail: error: server closed the stream with code 1001 (going away)"
        ),
        "{stderr}"
    );
}

#[test]
fn tail_against_a_closed_port_fails_to_connect() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
        // Dropped here: nothing listens on the port any more.
    };
    let url = format!("ws://127.0.0.1:{port}/ws/events");
    let out = herald(&["tail", &url]);
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!(
            "herald tail: error: cannot connect to 127.0.0.1:{port}: "
        )),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert_eq!(out.stdout, "");
}

#[test]
fn tail_against_a_non_websocket_path_shows_the_status() {
    let server = serve(&[]);
    let url = server.url.replace("/ws/events", "/nope");
    let out = herald(&["tail", &url]);
    assert_eq!(out.status.code(), Some(4), "{}", out.stderr);
    assert!(
        out.stderr.starts_with(
            "herald tail: error: server refused the WebSocket upgrade: HTTP 404 Not Found"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    for (args, needle) in [
        (&["serve", "--rate", "0"][..], "invalid rate `0`"),
        (&["serve", "--rate", "fast"][..], "invalid rate `fast`"),
        (&["serve", "--role", "king"][..], "unknown role `king`"),
        (
            &["serve", "--on-lag", "maybe"][..],
            "unknown on-lag policy `maybe`",
        ),
        (&["serve", "--validators", "0"][..], "--validators"),
        (&["serve", "--listen", "nowhere"][..], "--listen"),
        (&["serve", "--capacity", "0"][..], "--capacity"),
        (&["serve", "--max-behind", "0"][..], "--max-behind"),
        (&["serve", "--send-buffer", "4095"][..], "--send-buffer"),
        // 2^30 slots would be 8 GiB allocated up front: refused, not an abort.
        (&["serve", "--capacity", "1073741824"][..], "--capacity"),
        (
            &["serve", "--startup-capacity", "16777217"][..],
            "--startup-capacity",
        ),
        (
            &["tail", "--events", "block-deleted"][..],
            "unknown event type `block-deleted`",
        ),
        (&["tail", "--json", "--stats"][..], "cannot be used with"),
        (&["tail", "--count", "many"][..], "--count"),
        (&["tail", "--from", "-1"][..], "unexpected argument '-1'"),
        (&["tail", "--from", "soon"][..], "--from"),
        (&["frobnicate"][..], "unrecognized subcommand"),
        (&[][..], "Usage"),
    ] {
        let out = herald(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
    // A URL that is not ws:// is a usage error too, reported by tail itself.
    let out = herald(&["tail", "http://127.0.0.1:1/ws/events"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "herald tail: error: invalid URL `http://127.0.0.1:1/ws/events`: scheme `http` is not ws://\n"
    );
}

#[test]
fn serve_on_a_busy_address_exits_2() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = herald(&["serve", "--listen", &addr]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("herald: error: cannot listen on {addr}: ")),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "");
}

#[test]
fn tail_help_documents_exit_codes() {
    let out = herald(&["tail", "--help"]);
    assert!(out.status.success());
    for code in [
        "0  --count",
        "3  cannot connect",
        "4  the server refused",
        "6  the server closed",
    ] {
        assert!(out.stdout.contains(code), "{code}: {}", out.stdout);
    }
}

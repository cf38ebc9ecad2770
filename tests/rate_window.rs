//! The rate limit as the receiver counts it: by arrival, in any sliding second, on the
//! receiver's monotonic clock. With new connections that are slow to set up, and with the
//! gateway's wall clock stepped forward and back under a running drain (an NTP step).
//! In-process gateway on a real SQLite file, the ClickSend stand-in over loopback HTTP.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use rio_bridge::clock::step_wall_clock;
use rio_bridge::simulators::clicksend::{
    ClickSendSim, SimArrival, SimConfig, SimFault, SimFaultRates,
};
use tokio::net::TcpStream;

/// A TCP proxy in front of the provider stand-in whose listener can be clogged: while it
/// is, nothing is accepted and its accept queue is kept full, so the kernel drops every new
/// connection's SYN and a client's connect completes only when its SYN is sent again
/// (about a second later on Linux). Connections made before keep working. That is a cold
/// connection slow to set up, as a TCP and TLS handshake over a long path is.
struct SlowConnectProxy {
    addr: SocketAddr,
    clogged: Arc<AtomicBool>,
    held: std::sync::Mutex<Vec<TcpStream>>,
}

impl SlowConnectProxy {
    async fn start(upstream: SocketAddr) -> SlowConnectProxy {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = sock.local_addr().unwrap();
        let listener = sock.listen(1).unwrap();
        let clogged = Arc::new(AtomicBool::new(false));
        let c = clogged.clone();
        tokio::spawn(async move {
            loop {
                if c.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let accepted =
                    tokio::time::timeout(Duration::from_millis(5), listener.accept()).await;
                let Ok(Ok((mut down, _))) = accepted else {
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        SlowConnectProxy {
            addr,
            clogged,
            held: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Stops accepting and fills the accept queue until a connect no longer completes.
    async fn clog(&self) {
        self.clogged.store(true, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut held = Vec::new();
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(self.addr))
                .await
            {
                Ok(Ok(s)) => held.push(s),
                // Its SYN was dropped: the queue is full.
                _ => break,
            }
        }
        assert!(
            !held.is_empty(),
            "the accept queue took some connections first"
        );
        *self.held.lock().unwrap() = held;
    }

    /// Accepts again: connects waiting for their SYN to be sent again complete then.
    fn unclog(&self) {
        self.held.lock().unwrap().clear();
        self.clogged.store(false, Ordering::Release);
    }
}

/// A ClickSend stand-in on a thread and runtime of its own, so the arrival times it records
/// are not held up behind the gateway's tasks (they share this process). The stage's config
/// is pointed at it.
fn receiver(stage: &Stage) -> (ClickSendSim, SocketAddr) {
    let sim = ClickSendSim::new(SimConfig {
        username: CS_USER.into(),
        api_key: CS_KEY.into(),
        receipt_url: None,
        receipt_delay_ms: 0,
        inbound_url: None,
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let served = sim.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            served.serve(l).await
        })
    });
    stage.route_provider_via(addr);
    (sim, addr)
}

/// Sends one message to each of `n` contacts through `/message`, all at once.
async fn send_all(stage: &Stage, prefix: &str, n: usize) {
    let sends = (0..n).map(|i| {
        let contact = format!("{prefix}{i:04}");
        async move {
            let (status, body) = stage.send(&contact, &format!("to {contact}")).await;
            assert_eq!(status, 200, "{body}");
        }
    });
    futures::future::join_all(sends).await;
}

/// Arrival times (ms on the monotonic clock, from the first) of the stand-in's send calls.
fn arrival_ms(sent: &[SimArrival]) -> Vec<i64> {
    let Some(first) = sent.iter().map(|a| a.arrived).min() else {
        return Vec::new();
    };
    sent.iter()
        .map(|a| a.arrived.duration_since(first).as_millis() as i64)
        .collect()
}

async fn wait_for_sends(sim: &ClickSendSim, n: usize, secs: u64) {
    wait_until(
        &format!("{n} sends accepted by the stand-in"),
        secs,
        || async {
            let ok = sim.sent().iter().filter(|a| a.status == 200).count();
            (ok >= n).then_some(())
        },
    )
    .await;
}

/// Scenario: a drain at the limit while new connections take a second to set up. Slots
/// whose request waited for a connection must not land at the receiver on top of the next
/// second's: at most the limit in any sliding second, by arrival.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_new_connections_never_put_more_than_the_limit_in_a_second() {
    const LIMIT: usize = 20;
    let stage = Stage::new(Opts {
        provider_rate: LIMIT as u32,
        push_receipts: false,
        ..Opts::default()
    })
    .await;
    let (sim, sim_addr) = receiver(&stage);
    let proxy = SlowConnectProxy::start(sim_addr).await;
    stage.route_provider_via(proxy.addr);
    // Every send holds its connection for 400 ms, so a drain at the limit needs about
    // eight connections at once.
    sim.set_fault_rates(SimFaultRates {
        late: 1.0,
        late_ms: 400,
        ..SimFaultRates::default()
    });
    let gw = InProcess::start(&stage).await;
    // A few warm connections in the gateway's pool.
    send_all(&stage, "+6141000", 4).await;
    wait_for_sends(&sim, 4, 30).await;
    // From now on a new connection takes about a second to set up.
    proxy.clog().await;
    let burst = 80;
    tokio::join!(send_all(&stage, "+6142000", burst), async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.unclog();
    });
    wait_for_sends(&sim, 4 + burst, 90).await;
    gw.shutdown().await;

    let sent = sim.sent();
    let busiest = busiest_second(&arrival_ms(&sent));
    eprintln!(
        "{} sends; most in any second at the stand-in: {busiest}",
        sent.len()
    );
    assert!(
        busiest <= LIMIT,
        "{busiest} sends arrived within one second (limit {LIMIT})"
    );
}

/// Scenario: the wall clock steps an hour forward while a backlog drains. That must not
/// free the rate window: no burst on top of the last second's sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_forward_does_not_open_the_rate_window() {
    const LIMIT: usize = 100;
    let stage = Stage::new(Opts {
        provider_rate: LIMIT as u32,
        push_receipts: false,
        // The gateway shares two cores with 300 concurrent /message calls here: on a
        // loaded machine that alone puts sends more than 10 ms off their slots. A wider
        // guard keeps it out of what is measured, the step.
        channel_extra: "rate_guard_ms = 50".into(),
        ..Opts::default()
    })
    .await;
    let (sim, _) = receiver(&stage);
    let gw = InProcess::start(&stage).await;
    let n = 300;
    tokio::join!(send_all(&stage, "+6143000", n), async {
        wait_until("the drain under way", 60, || async {
            (sim.sent().len() >= 150).then_some(())
        })
        .await;
        step_wall_clock(3_600_000);
    });
    wait_for_sends(&sim, n, 90).await;
    gw.shutdown().await;

    let busiest = busiest_second(&arrival_ms(&sim.sent()));
    eprintln!("{n} sends; most in any second at the stand-in: {busiest}");
    assert!(
        busiest <= LIMIT,
        "{busiest} sends arrived within one second (limit {LIMIT})"
    );
}

/// Scenario: the wall clock steps two hours back while a backlog drains. The lane must not
/// stand still until the wall clock catches up (on its rate window, its pacing, or the due
/// times of the queues it has), and the window still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_step_back_does_not_stall_the_drain() {
    const LIMIT: usize = 100;
    let stage = Stage::new(Opts {
        provider_rate: LIMIT as u32,
        push_receipts: false,
        // The gateway shares two cores with 300 concurrent /message calls here: on a
        // loaded machine that alone puts sends more than 10 ms off their slots. A wider
        // guard keeps it out of what is measured, the step.
        channel_extra: "rate_guard_ms = 50".into(),
        ..Opts::default()
    })
    .await;
    let (sim, _) = receiver(&stage);
    let gw = InProcess::start(&stage).await;
    let n = 300;
    tokio::join!(send_all(&stage, "+6143000", n), async {
        wait_until("the drain under way", 60, || async {
            (sim.sent().len() >= 150).then_some(())
        })
        .await;
        step_wall_clock(-7_200_000);
    });
    // A stalled lane would wait two hours.
    wait_for_sends(&sim, n, 90).await;
    gw.shutdown().await;

    let busiest = busiest_second(&arrival_ms(&sim.sent()));
    eprintln!("{n} sends; most in any second at the stand-in: {busiest}");
    assert!(
        busiest <= LIMIT,
        "{busiest} sends arrived within one second (limit {LIMIT})"
    );
}

/// The first arrival answered 429, and when it arrived.
async fn wait_for_throttle(sim: &ClickSendSim, after: usize) -> Instant {
    wait_until("a 429 from the stand-in", 60, || async {
        sim.sent()
            .iter()
            .skip(after)
            .find(|a| a.status == 429)
            .map(|a| a.arrived)
    })
    .await
}

/// Scenario: a 429 pauses the lane for its Retry-After, by the monotonic clock. A wall clock
/// stepped forward during the pause must not end it early; stepped back, it must not
/// stretch it (the lane would stand still for the size of the step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pause_holds_its_length_through_wall_clock_steps() {
    let stage = Stage::new(Opts {
        provider_rate: 20,
        push_receipts: false,
        ..Opts::default()
    })
    .await;
    let (sim, _) = receiver(&stage);
    let gw = InProcess::start(&stage).await;

    // Forward during the pause.
    sim.push_fault(SimFault::Throttle {
        retry_after: Some(3),
    });
    let (_, throttled_at) = tokio::join!(send_all(&stage, "+6144000", 10), async {
        let at = wait_for_throttle(&sim, 0).await;
        step_wall_clock(3_600_000);
        // Traffic goes on during the pause (and wakes the lane).
        send_all(&stage, "+6144100", 5).await;
        at
    });
    wait_for_sends(&sim, 15, 60).await;
    let sent = sim.sent();
    let inside: Vec<u128> = sent
        .iter()
        .filter(|a| a.arrived > throttled_at)
        .map(|a| a.arrived.duration_since(throttled_at).as_millis())
        .filter(|&ms| ms < 3000)
        .collect();
    assert!(
        inside.is_empty(),
        "sends arrived {inside:?} ms after a 429 with Retry-After: 3"
    );

    // Back during the pause.
    let before = sent.len();
    sim.push_fault(SimFault::Throttle {
        retry_after: Some(2),
    });
    tokio::join!(send_all(&stage, "+6145000", 10), async {
        wait_for_throttle(&sim, before).await;
        step_wall_clock(-7_200_000);
    });
    // A pause stretched by the step would last two hours.
    wait_for_sends(&sim, 25, 60).await;
    gw.shutdown().await;
}

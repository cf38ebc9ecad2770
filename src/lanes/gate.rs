//! Where an attempt's rate slot meets the wire.
//!
//! The receiver counts requests by their arrival, so a slot must be logged at the time its
//! request actually leaves. An attempt takes its slot right before it sends; on a pooled
//! connection the request leaves at once. When there is no idle connection, the request
//! waits for a new one first (TCP and TLS handshakes, up to the connect timeout), or for a
//! pooled one to come free, and leaves whenever either is ready. Logging the slot at the
//! time it was taken would then put the arrival up to seconds after its slot, beyond any
//! guard, and the receiver would see more than the limit in a second.
//!
//! So once the request has waited a few ms for a connection its slot is *suspended*: it
//! counts in every window as if it were leaving right now (nothing else can take it), and
//! once a connection is ready (ours, or a pooled one that came free first) it is *placed*
//! at that moment, the time the request leaves (a shorter wait just moves the slot to that
//! time). Every window the receiver can see then holds at most the limit, whatever the
//! connect took, and nothing waits for a second slot.
//!
//! The gate of the attempt in progress travels with its delivery as a task-local; the HTTP
//! clients' connector layer ([`ConnectGateLayer`]) sees it while a connect runs on behalf
//! of that delivery.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use super::LaneCtx;
use crate::clock::mono_ms;

tokio::task_local! {
    static GATE: Arc<SlotGate>;
}

/// One attempt's rate slot on its way to the wire.
pub struct SlotGate {
    ctx: Arc<LaneCtx>,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Logged at this time (monotonic ms); no request has gone out on it yet.
    Held(i64),
    /// Its request waits for a connection: the slot counts in every window.
    Pending,
    /// A request went out on it, logged at this time: a connect made later in the same
    /// attempt no longer moves it.
    Used(i64),
}

impl SlotGate {
    pub(super) fn new(ctx: Arc<LaneCtx>, slot_ms: i64) -> Arc<SlotGate> {
        Arc::new(SlotGate {
            ctx,
            state: Mutex::new(State::Held(slot_ms)),
        })
    }

    /// Runs `fut` (the delivery) with this gate in reach of the connector.
    pub(super) async fn scope<F: Future>(self: &Arc<Self>, fut: F) -> F::Output {
        GATE.scope(self.clone(), fut).await
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot's time once the delivery is over (monotonic ms): when its request left.
    pub(super) fn finish(&self) -> i64 {
        let mut st = self.state();
        match *st {
            State::Held(t) | State::Used(t) => t,
            State::Pending => {
                let t = self.ctx.with_limiter(|l| l.place(mono_ms()));
                *st = State::Used(t);
                t
            }
        }
    }

    /// No request has gone out on the slot yet (a connect may still move it).
    fn is_held(&self) -> bool {
        matches!(*self.state(), State::Held(_))
    }

    /// The slot's request is still waiting for a new connection: suspend the slot until
    /// it (or a pooled one) is ready. False when the slot is not this connect's to move.
    fn connecting(&self) -> bool {
        let mut st = self.state();
        let State::Held(t) = *st else {
            return false;
        };
        if self.ctx.with_limiter(|l| l.suspend(t)) {
            *st = State::Pending;
            true
        } else {
            false
        }
    }

    /// A connection is ready: the request leaves now, and its slot is logged now. (A slot
    /// not suspended yet has been in the log all along, since less than a window ago, so
    /// every slot granted meanwhile counted it: moving it later is safe.)
    fn connected(&self) {
        let mut st = self.state();
        let now = mono_ms();
        match *st {
            State::Pending => *st = State::Held(self.ctx.with_limiter(|l| l.place(now))),
            State::Held(t) if t < now => {
                let moved = self
                    .ctx
                    .with_limiter(|l| l.suspend(t).then(|| l.place(now)));
                if let Some(t) = moved {
                    *st = State::Held(t);
                }
            }
            State::Held(_) | State::Used(_) => {}
        }
    }

    /// A request of the attempt went out (or failed).
    fn sent(&self) {
        let mut st = self.state();
        *st = match *st {
            State::Held(t) | State::Used(t) => State::Used(t),
            State::Pending => State::Used(self.ctx.with_limiter(|l| l.place(mono_ms()))),
        };
    }
}

/// Tells the attempt in progress, if any, that one of its requests is done: its slot was
/// used, a later request of the same attempt does not move it.
pub fn request_sent() {
    let _ = GATE.try_with(|g| g.sent());
}

fn current() -> Option<Arc<SlotGate>> {
    GATE.try_with(Arc::clone).ok()
}

fn is_current(gate: &Arc<SlotGate>) -> bool {
    GATE.try_with(|g| Arc::ptr_eq(g, gate)).unwrap_or(false)
}

/// The HTTP clients' connector layer: a connect made on behalf of an attempt suspends the
/// attempt's slot until the request can leave (see the module's doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectGateLayer;

impl<S> tower::Layer<S> for ConnectGateLayer {
    type Service = ConnectGate<S>;
    fn layer(&self, inner: S) -> ConnectGate<S> {
        ConnectGate { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ConnectGate<S> {
    inner: S,
}

impl<S, R> tower::Service<R> for ConnectGate<S>
where
    S: tower::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = GatedConnect<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        GatedConnect {
            inner: Box::pin(self.inner.call(req)),
            gate: None,
            timer: None,
            first: true,
        }
    }
}

/// A connect this short keeps the slot in the log where it was until the request leaves
/// (then it moves to that time): a loopback or LAN connect, or a pooled connection coming
/// free at once, then costs the lane nothing. A longer one suspends it.
const SUSPEND_AFTER: std::time::Duration = std::time::Duration::from_millis(5);

/// A connect in progress on behalf of an attempt, and the slot it may suspend.
pub struct GatedConnect<F> {
    inner: Pin<Box<F>>,
    /// The attempt's gate while this connect runs in its scope.
    gate: Option<Arc<SlotGate>>,
    /// Fires when the connect has taken [`SUSPEND_AFTER`].
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    first: bool,
}

impl<F> GatedConnect<F> {
    /// The request no longer waits for this connect: its slot is logged now.
    fn release(&mut self) {
        self.timer = None;
        if let Some(g) = self.gate.take() {
            g.connected();
        }
    }
}

impl<F: Future> Future for GatedConnect<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if this.first {
            // First polled by the request that asked for the connection, inside its
            // attempt's scope.
            this.first = false;
            if let Some(g) = current()
                && g.is_held()
            {
                this.gate = Some(g);
                this.timer = Some(Box::pin(tokio::time::sleep(SUSPEND_AFTER)));
            }
        } else if let Some(g) = &this.gate
            && !is_current(g)
        {
            // Polled outside the attempt's scope: the pool handed the request an idle
            // connection first and finishes this connect in the background. The request
            // has just left on that connection.
            this.release();
        }
        if let Poll::Ready(out) = this.inner.as_mut().poll(cx) {
            this.release();
            return Poll::Ready(out);
        }
        if let Some(t) = &mut this.timer
            && t.as_mut().poll(cx).is_ready()
        {
            // Still connecting: from now on the slot counts in every window until the
            // request leaves.
            this.timer = None;
            if let Some(g) = &this.gate {
                g.connecting();
            }
        }
        Poll::Pending
    }
}

impl<F> Drop for GatedConnect<F> {
    fn drop(&mut self) {
        // Given up (the request timed out or was dropped): whatever happens next, a
        // suspended slot is placed no earlier than now.
        self.release();
    }
}

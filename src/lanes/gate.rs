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
//! So while the request waits for a connection its slot is *suspended*: it counts in every
//! window as if it were leaving right now (nothing else can take it), and once a connection
//! is ready (ours, or a pooled one that came free first) it is *placed* at that moment, the
//! time the request leaves. Every window the receiver can see then holds at most the limit,
//! whatever the connect took, and nothing waits for a second slot.
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

    /// A new connection is being made for the slot's request: suspend the slot until it
    /// (or a pooled one) is ready. False when the slot is not this connect's to move.
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

    /// A connection is ready: the request leaves now.
    fn connected(&self) {
        let mut st = self.state();
        if *st == State::Pending {
            *st = State::Held(self.ctx.with_limiter(|l| l.place(mono_ms())));
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
            first: true,
        }
    }
}

/// A connect in progress, holding the slot it suspended.
pub struct GatedConnect<F> {
    inner: Pin<Box<F>>,
    gate: Option<Arc<SlotGate>>,
    first: bool,
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
                && g.connecting()
            {
                this.gate = Some(g);
            }
        } else if let Some(g) = &this.gate
            && !is_current(g)
        {
            // Polled outside the attempt's scope: the pool handed the request an idle
            // connection first and finishes this connect in the background. The request
            // has just left on that connection.
            g.connected();
            this.gate = None;
        }
        let out = std::task::ready!(this.inner.as_mut().poll(cx));
        if let Some(g) = this.gate.take() {
            g.connected();
        }
        Poll::Ready(out)
    }
}

impl<F> Drop for GatedConnect<F> {
    fn drop(&mut self) {
        // Given up (the request timed out or was dropped): whatever happens next, the slot
        // is placed no earlier than now.
        if let Some(g) = self.gate.take() {
            g.connected();
        }
    }
}

//! Fixed-time release: what a researcher waits for is a public function of
//! the plan and public sizes, not of the data.
//!
//! Once a query's cost is reserved, its work runs on a task of its own
//! against a deadline computed before execution (Haeberlen et al. 2011,
//! "Differential privacy under fire"): the outcome (an answer, or the fixed
//! charged failure when the work errs, panics, is cancelled or overruns)
//! is delivered at the deadline, never earlier. The work is spawned, so a
//! client that goes away does not stop it half-way: it ends, and its
//! outcome is journalled and committed like any other.
//!
//! Time comes from a [`Clock`], so that tests inject one instead of
//! sleeping.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use futures::FutureExt;
use futures::future::BoxFuture;

/// A source of time and of waits.
pub trait Clock: Send + Sync + 'static {
    /// Time since the clock's origin.
    fn now(&self) -> Duration;
    /// Resolves when the clock reaches `at`: the deadline expiring while
    /// the work still runs.
    fn expire_at(&self, at: Duration) -> BoxFuture<'static, ()>;
    /// Waits until `at` before an outcome is released.
    fn release_at(&self, at: Duration) -> BoxFuture<'static, ()>;
}

/// The machine's monotonic clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: tokio::time::Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> SystemClock {
        SystemClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn expire_at(&self, at: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep_until(self.origin + at).boxed()
    }

    fn release_at(&self, at: Duration) -> BoxFuture<'static, ()> {
        tokio::time::sleep_until(self.origin + at).boxed()
    }
}

/// A clock for tests: it never moves on its own. A release "waits" by
/// jumping to its deadline (and records it); a deadline expires during the
/// work only when the test asks for overruns.
#[derive(Debug, Default)]
pub struct ManualClock {
    state: Mutex<ManualState>,
}

#[derive(Debug, Default)]
struct ManualState {
    now: Duration,
    overrun: bool,
    releases: Vec<Duration>,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// From now on, every deadline expires before the work ends.
    pub fn overrun_every_deadline(&self) {
        self.state.lock().expect("clock lock").overrun = true;
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.state.lock().expect("clock lock").now += by;
    }

    /// The instants releases waited for, in order.
    pub fn releases(&self) -> Vec<Duration> {
        self.state.lock().expect("clock lock").releases.clone()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        self.state.lock().expect("clock lock").now
    }

    fn expire_at(&self, _at: Duration) -> BoxFuture<'static, ()> {
        if self.state.lock().expect("clock lock").overrun {
            futures::future::ready(()).boxed()
        } else {
            futures::future::pending().boxed()
        }
    }

    fn release_at(&self, at: Duration) -> BoxFuture<'static, ()> {
        let mut state = self.state.lock().expect("clock lock");
        state.now = state.now.max(at);
        state.releases.push(at);
        futures::future::ready(()).boxed()
    }
}

/// How a piece of work ended without an answer. The kind is for the
/// operator's journal; a researcher is told only that the query was charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The work returned an error (a resource limit among them).
    Error,
    /// The work panicked.
    Panic,
    /// The deadline passed first.
    Overrun,
    /// The researcher cancelled it.
    Cancelled,
    /// Its process died; the next one recorded it.
    Killed,
}

impl Failure {
    /// The journal's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Error => "error",
            Failure::Panic => "panic",
            Failure::Overrun => "overrun",
            Failure::Cancelled => "cancelled",
            Failure::Killed => "killed",
        }
    }
}

/// Private work in flight, process-wide: while there is any, a panic's
/// message (which could hold a value) is not printed.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        quiet_panics();
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Installs, once, a panic hook that prints a fixed line instead of the
/// panic's message while private work is in flight.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_FLIGHT.load(Ordering::SeqCst) > 0 {
                eprintln!(
                    "a query's work panicked; its outcome is the charged failure (details withheld)"
                );
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `work` on a task of its own until `expires` (on `clock`; never
/// with `None`), catching an error, a panic, a cancellation (`cancelled`
/// notified) or an overrun as a [`Failure`]. On a cancellation or an
/// overrun, `stop` is called (to stop work that does not yield, such as a
/// homomorphic job) and the task is aborted: nothing past the deadline is
/// waited for.
pub async fn run_until<T, E>(
    clock: &Arc<dyn Clock>,
    expires: Option<Duration>,
    cancelled: &Notify,
    stop: impl FnOnce(),
    work: impl Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, Failure>
where
    T: Send + 'static,
    E: Send + 'static,
{
    let _in_flight = InFlight::enter();
    // Listening before the work starts: a cancellation notified once the
    // work is running (it may already run on another thread before this
    // task reaches the `select!`) must not be lost.
    let notified = cancelled.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let mut task = tokio::spawn(work);
    let expiry = match expires {
        Some(at) => clock.expire_at(at),
        None => futures::future::pending().boxed(),
    };
    let failure = tokio::select! {
        biased;
        joined = &mut task => return match joined {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(Failure::Error),
            Err(e) if e.is_panic() => Err(Failure::Panic),
            Err(_) => Err(Failure::Error),
        },
        () = &mut notified => Failure::Cancelled,
        () = expiry => Failure::Overrun,
    };
    stop();
    task.abort();
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manual() -> (Arc<ManualClock>, Arc<dyn Clock>) {
        let clock = Arc::new(ManualClock::new());
        let dynamic: Arc<dyn Clock> = clock.clone();
        (clock, dynamic)
    }

    #[tokio::test]
    async fn every_ending_is_caught() {
        let (manual, clock) = manual();
        let never = Notify::new();
        let at = Some(Duration::from_secs(1));
        let ok = run_until(&clock, at, &never, || {}, async { Ok::<_, ()>(7) }).await;
        assert_eq!(ok, Ok(7));
        let err = run_until(&clock, at, &never, || {}, async { Err::<u8, _>("no") }).await;
        assert_eq!(err, Err(Failure::Error));
        let panicked = run_until(&clock, at, &never, || {}, async {
            if always() {
                panic!("a value that must not be printed");
            }
            Ok::<u8, ()>(1)
        })
        .await;
        assert_eq!(panicked, Err(Failure::Panic));

        let cancel = Arc::new(Notify::new());
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, s, m) = (Arc::clone(&cancel), Arc::clone(&stopped), clock_of(&manual));
        let cancelled = tokio::spawn(async move {
            run_until(
                &m,
                None,
                &c,
                move || s.store(true, Ordering::SeqCst),
                async {
                    futures::future::pending::<()>().await;
                    Ok::<u8, ()>(1)
                },
            )
            .await
        });
        tokio::task::yield_now().await;
        while !cancelled.is_finished() {
            cancel.notify_waiters();
            tokio::task::yield_now().await;
        }
        assert_eq!(cancelled.await.unwrap(), Err(Failure::Cancelled));
        assert!(
            stopped.load(Ordering::SeqCst),
            "a cancellation stops the work"
        );

        manual.overrun_every_deadline();
        let late = run_until(&clock, at, &never, || {}, async {
            futures::future::pending::<()>().await;
            Ok::<u8, ()>(1)
        })
        .await;
        assert_eq!(late, Err(Failure::Overrun));
    }

    fn clock_of(manual: &Arc<ManualClock>) -> Arc<dyn Clock> {
        manual.clone()
    }

    fn always() -> bool {
        true
    }

    /// A clock whose `expire_at` returns only after the work has started
    /// and the query was cancelled: the cancellation comes while
    /// `run_until` is between starting the work and waiting on it, as a
    /// Ctrl-C can on a busy machine.
    struct CancelledBeforeTheWait {
        cancelled: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Clock for CancelledBeforeTheWait {
        fn now(&self) -> Duration {
            Duration::ZERO
        }
        fn expire_at(&self, _: Duration) -> BoxFuture<'static, ()> {
            self.cancelled.lock().unwrap().recv().unwrap();
            futures::future::pending().boxed()
        }
        fn release_at(&self, _: Duration) -> BoxFuture<'static, ()> {
            futures::future::ready(()).boxed()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancellation_as_the_work_starts_is_not_lost() {
        let (tx, rx) = std::sync::mpsc::channel();
        let clock: Arc<dyn Clock> = Arc::new(CancelledBeforeTheWait {
            cancelled: std::sync::Mutex::new(rx),
        });
        let cancel = Arc::new(Notify::new());
        let c = Arc::clone(&cancel);
        let ended = tokio::time::timeout(
            Duration::from_secs(60),
            run_until(
                &clock,
                Some(Duration::from_secs(1)),
                &cancel,
                || {},
                async move {
                    // The work runs on the other worker: it is cancelled (the
                    // CLI's Ctrl-C handler) before `run_until` listens.
                    c.notify_waiters();
                    tx.send(()).unwrap();
                    futures::future::pending::<()>().await;
                    Ok::<u8, ()>(1)
                },
            ),
        )
        .await;
        assert_eq!(
            ended,
            Ok(Err(Failure::Cancelled)),
            "a lost cancellation leaves the query running"
        );
    }

    #[tokio::test]
    async fn a_manual_release_jumps_to_its_deadline() {
        let (manual, clock) = manual();
        manual.advance(Duration::from_millis(30));
        clock.release_at(Duration::from_millis(500)).await;
        assert_eq!(clock.now(), Duration::from_millis(500));
        assert_eq!(manual.releases(), vec![Duration::from_millis(500)]);
    }
}

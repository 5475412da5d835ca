//! Panics inside a guarded node: caught like errors, and kept out of the
//! panic hook's output so no message carrying a patient's value reaches
//! stderr.

use std::cell::Cell;
use std::sync::Once;

use datafusion::common::Result as DfResult;

/// Runs `f`, turning a panic into an error (and keeping the panic hook quiet).
pub(super) fn quietly<T>(f: impl FnOnce() -> DfResult<T>) -> DfResult<T> {
    QUIET.with(|q| q.set(q.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    result.unwrap_or_else(|_| {
        Err(datafusion::error::DataFusionError::Execution(
            "a guarded expression panicked".into(),
        ))
    })
}

thread_local! {
    static QUIET: Cell<u32> = const { Cell::new(0) };
}

/// Installs, once, a panic hook that says nothing about panics caught by a
/// guard and defers to the previous hook for every other.
pub(super) fn silence_guarded_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
}

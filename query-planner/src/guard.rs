//! Total evaluation: an expression over patients' rows yields a value or
//! NULL, never an error, and never a text longer than [`MAX_VALUE_BYTES`].
//!
//! An error is an observable: if `CASE WHEN <one patient> THEN 1/0 END`
//! fails the query, whether it failed is a fact about that patient, and the
//! error's text may carry their value (`Cannot cast string 'Other Race'`).
//! So the planner makes evaluation total, in two parts:
//!
//! - **At plan time** ([`check`]), a refusal that is free and depends on
//!   the SQL alone: expression kinds that have no place in a study query
//!   (placeholders, variables, `UNNEST`, wildcards left after planning),
//!   and size-amplifying functions whose literal length exceeds the cap
//!   (`lpad(x, 300000000)`).
//! - **At execution** ([`plan`], applied to the final logical plan just
//!   before DataFusion's physical planner, so no optimizer rule runs after
//!   it): every node that can fail is evaluated through a guard with
//!   row-level NULL-on-error semantics. A guard evaluates its node over the
//!   batch; if that fails, it evaluates each half of the batch, down to
//!   single rows, and a row that still fails yields NULL (at most `2n`
//!   evaluations for `n` rows, and one when nothing fails). Casts,
//!   arithmetic, string concatenation, pattern matching, negation and every
//!   scalar function are guarded; what is left (columns, literals, `CASE`,
//!   `AND`/`OR`/`NOT`, `IS [NOT] NULL/TRUE/FALSE`, comparisons and `IN`
//!   lists between values of one type, aggregates over guarded arguments)
//!   cannot fail. By induction, no expression of a study query can.
//!
//! Guards also bound what one value costs. Every text or binary value a
//! guard produces longer than [`MAX_VALUE_BYTES`] is NULL, so no chain of
//! concatenations can grow a value past it; and the functions whose output
//! can exceed their inputs by more than a constant factor are checked per
//! row before they run (`lpad`/`rpad` by their length argument, `replace`
//! by `len(s) + (len(s) + 1) · len(to)`): a row over the cap is NULL
//! without being computed. `CASE WHEN <one patient> THEN lpad(x, 4e8) END`
//! therefore allocates nothing more for that patient than for anyone else.
//!
//! A panic inside a guarded node is caught like an error, and the default
//! panic hook is told to stay silent about it, so no message with a value
//! reaches stderr.
//!
//! Adding a function to the allow-list ([`crate::SCALAR_FUNCTIONS`]) means
//! deciding its failure modes (all of them become NULL here) and its cost:
//! if its output can grow faster than linearly in its inputs, it needs a
//! pre-check in [`precheck`].
//!
//! [`MAX_VALUE_BYTES`]: caps::MAX_VALUE_BYTES
//! [`precheck`]: caps::precheck

mod caps;
mod codec;
mod quiet;
mod refuse;
mod rewrite;
mod udf;

pub(crate) use codec::{decode as decode_guard, encode as encode_guard};
pub(crate) use refuse::check;
pub(crate) use rewrite::plan;

//! `NoisyAggregate`: turns the exact, contribution-bounded aggregates of
//! one `GROUP BY` into differentially private releases.
//!
//! Its input is DataFusion's own `Aggregate` over `BoundContributions`,
//! computing for each group the exact statistics each release needs
//! (counts, fixed-point sums, value lists for quantiles, and the number of
//! distinct patients when keys are selected). It then
//! - chooses the released groups: the whole public domain (groups absent
//!   from the data are released too, from zero), DP key selection, or the
//!   one group of an aggregate without `GROUP BY`;
//! - adds the noise planned for each release and post-processes it
//!   (clamping, ratios, roots), and
//! - outputs exactly the schema of the researcher's aggregate, so the rest
//!   of the query (HAVING, ORDER BY, LIMIT, expressions) runs unchanged on
//!   the noisy values.
//!
//! The parts: the planned site (`site`), the logical node (`node`) and
//! physical operator (`exec`), the choice of groups (`groups`), reading the
//! exact statistics (`exact`), and the noisy release itself (`apply`).

mod apply;
mod exact;
mod exec;
mod groups;
mod node;
mod site;

pub(crate) use exec::NoisyAggregateExec;
pub(crate) use node::NoisyAggregate;
pub use site::ReleasedAggregate;
pub(crate) use site::{Keys, PlannedRelease, ReleaseLog, Site};

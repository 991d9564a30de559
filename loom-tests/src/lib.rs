//! loom models of herald-core's broadcast ring (`herald_core::ring`), checked against the
//! ring's *real* code: under `RUSTFLAGS="--cfg herald_loom"` herald-core takes its atomics,
//! `Arc`, threads, `UnsafeCell` and reclamation from loom (see `core/src/sync.rs`).
//!
//! Run every model with [`RUN_MODELS`] (`bash loom-tests/run.sh`), and show that the models
//! catch deliberate bugs with [`RUN_MUTANTS`] (`bash loom-tests/mutants.sh`). In a build
//! without `--cfg herald_loom` this crate holds no model, only a check that the commands
//! documented in the README and run by `.ci/run` are these.
//!
//! The models are in `tests/`; this file holds what they share (built under loom only,
//! so not linked here): `check` (the loom runner with the preemption bound), `Payload` (a
//! value whose body loom tracks and whose drop is recorded in a `DropLog`) and
//! `Transcript` (the exactly-once / exact-lag checker).

/// The one command that runs every model (what the README documents and `.ci/run` runs).
pub const RUN_MODELS: &str = "bash loom-tests/run.sh";

/// The command that builds herald-core with each deliberate bug and requires a model to
/// fail for every one.
pub const RUN_MUTANTS: &str = "bash loom-tests/mutants.sh";

/// Preemption bound of every model unless `LOOM_MAX_PREEMPTIONS` is set. The README's
/// "Loom model checks" section says why 2 covers the interleavings that matter.
pub const PREEMPTION_BOUND: usize = 3;

#[cfg(herald_loom)]
mod model;

#[cfg(herald_loom)]
pub use model::*;

#[cfg(all(test, not(herald_loom)))]
mod tests {
    use super::{PREEMPTION_BOUND, RUN_MODELS, RUN_MUTANTS};

    fn read(path: &str) -> String {
        let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {full}: {e}"))
    }

    /// The models need `--cfg herald_loom`, so a plain `cargo test` cannot run them; it
    /// checks instead that the README documents, and `.ci/run` runs, the commands that do.
    #[test]
    fn loom_commands_are_documented_and_run_by_ci() {
        let readme = read("README.md");
        let section = readme
            .split("## Loom model checks")
            .nth(1)
            .expect("README.md has a `## Loom model checks` section");
        assert!(
            section.contains(RUN_MODELS),
            "README documents `{RUN_MODELS}`"
        );
        assert!(
            section.contains(RUN_MUTANTS),
            "README documents `{RUN_MUTANTS}`"
        );
        assert!(
            section.contains(&format!("LOOM_MAX_PREEMPTIONS={PREEMPTION_BOUND}")),
            "README states the preemption bound {PREEMPTION_BOUND}"
        );
        let ci = read(".ci/run");
        let ci_lines: Vec<&str> = ci.lines().map(str::trim).collect();
        assert!(
            ci_lines.contains(&RUN_MODELS),
            ".ci/run runs `{RUN_MODELS}`"
        );
        assert!(
            ci_lines.contains(&RUN_MUTANTS),
            ".ci/run runs `{RUN_MUTANTS}`"
        );
        let run = read("loom-tests/run.sh");
        assert!(
            run.contains("--cfg herald_loom") && run.contains("-p herald-loom-tests"),
            "run.sh builds herald-core under loom and runs this crate's models"
        );
        assert!(
            run.contains(&format!("LOOM_MAX_PREEMPTIONS:-{PREEMPTION_BOUND}")),
            "run.sh defaults to the documented preemption bound"
        );
    }
}

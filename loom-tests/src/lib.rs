//! loom models of herald-core (see tests/). Built only with `--cfg herald_loom`.

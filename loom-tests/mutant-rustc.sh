#!/usr/bin/env bash
# The RUSTC_WORKSPACE_WRAPPER of mutants.sh. It is called through a symlink
# `<dir>/<mutant>/rustc` and compiles herald-core with `--cfg herald_mutant="<mutant>"`,
# every other crate unchanged. Cargo records the wrapper's path in the fingerprint (and
# file names) of workspace crates, so each mutant gets its own herald-core and models,
# switching mutants rebuilds nothing else, and the clean build is never overwritten.
set -euo pipefail
mutant=$(basename "$(dirname "$0")")
rustc=$1
shift
case " $* " in
*" --crate-name herald_core "*)
    exec "$rustc" "$@" --cfg "herald_mutant=\"$mutant\""
    ;;
*)
    exec "$rustc" "$@"
    ;;
esac

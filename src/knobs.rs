//! Measuring knobs: environment variables that make the library compile a layer another
//! way, so that `examples/convab.rs` and `examples/modelab.rs` can time both ways in one
//! process. The defaults are the design; a knob never changes results beyond the rounding
//! of another order of operations, and a value the reader does not understand is ignored
//! (the default stays). Every knob is read where the decision is made, not once per
//! process: an A/B tool sets it, compiles, sets it otherwise and compiles again. The list,
//! with what each does: docs/jit.md, "Measuring knobs". (`CNNC_ISA` is an option, not a
//! knob: `Options::isa`.)
use std::str::FromStr;

/// `name=0`: a part of the design that is on by default is off.
pub(crate) fn off(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == "0")
}

/// `name=n`: a number in place of a constant of the design, if it parses.
pub(crate) fn number<T: FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// `name=word`: a named variant of the design (`CNNC_HUGE_PAGES=small`).
pub(crate) fn is(name: &str, word: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == word)
}

/// `name=1` / `name=0`: a choice the design makes by itself, forced either way.
pub(crate) fn forced(name: &str) -> Option<bool> {
    match std::env::var(name).ok()?.trim() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// `name=a,b,...`: numbers the knob applies to (Winograd forced at these output heights).
pub(crate) fn numbers(name: &str) -> Vec<usize> {
    std::env::var(name).map_or(Vec::new(), |v| {
        v.split(',').filter_map(|c| c.trim().parse().ok()).collect()
    })
}

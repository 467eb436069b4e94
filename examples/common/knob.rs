//! Setting the measuring knob an A/B example compares (`examples/convab.rs`,
//! `examples/fcab.rs`): the library reads a knob where it makes the decision, so the
//! example sets it, compiles one variant, sets it otherwise and compiles the other.

/// Sets environment variable `var` to `value` for what is compiled next; `-` unsets it.
pub fn set(var: &str, value: &str) {
    match value {
        "-" => std::env::remove_var(var),
        v => std::env::set_var(var, v),
    }
}

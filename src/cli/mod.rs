//! The `cnnc` command line: one module per subcommand, each with its arguments (clap)
//! and the function that runs it.
pub mod bench;
pub mod compile;
pub mod engine;
pub mod export;
pub mod import;
pub mod info;
pub mod init;
pub mod passes;
pub mod run;

/// Parses a count of at least 1 (clap reports anything else as a usage error, exit code 2).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number, at least 1".into()),
    }
}

/// A clap usage error as one line, like every other user error: its message and the items
/// it lists, without the usage and help hints that follow.
pub fn one_line(text: &str) -> String {
    text.lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

//! The `cnnc` command line: one module per subcommand.
pub mod info;
pub mod run;

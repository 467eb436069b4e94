//! The `cnnc` command line: one module per subcommand.
pub mod bench;
pub mod engine;
pub mod info;
pub mod run;

//! The `cnnc` command line: one module per subcommand.
pub mod bench;
pub mod compile;
pub mod engine;
pub mod info;
pub mod passes;
pub mod run;

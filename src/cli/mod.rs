//! The `cnnc` command line: one module per subcommand.
pub mod compile;
pub mod info;
pub mod passes;
pub mod run;

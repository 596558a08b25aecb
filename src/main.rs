//! The `sonotap` command: see `sonotap --help`.

fn main() -> std::process::ExitCode {
    sonotap::cli::main()
}

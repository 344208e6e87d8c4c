//! `fl`: the federation's command-line program.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    fl_core::model::allocator::keep_freed_memory();
    let args = match cli::Cli::parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.use_stderr() {
                // --help and --version
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // A usage error: one line, as every other error (clap puts what is missing on the
            // lines after its first, before the usage).
            let text = e.render().to_string();
            let said: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            let line = match said.is_empty() {
                true => "invalid arguments".to_string(),
                false => said.join(" "),
            };
            eprintln!("fl: {line} (see `fl --help`)");
            return ExitCode::from(2);
        }
    };
    cli::init_logging(args.verbose, args.quiet);
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

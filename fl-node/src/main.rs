//! `fl`: the federation's command-line program.

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    let args = match cli::Cli::parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.use_stderr() {
                // --help and --version
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // A usage error: one line, as every other error.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("fl: {first} (see `fl --help`)");
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

use std::process::ExitCode;

fn main() -> ExitCode {
    match tidegate::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(tidegate::cli::EXIT_ERROR)
        }
    }
}

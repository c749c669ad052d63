use std::process::ExitCode;

fn main() -> ExitCode {
    // glibc gives each thread that allocates an arena of its own; a
    // long-running daemon with a few threads keeps less memory with one
    // arena per core.
    // SAFETY: called before any other thread exists.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    match tidegate::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(tidegate::cli::EXIT_ERROR)
        }
    }
}

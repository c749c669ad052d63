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
    // libgit2 keeps the trees and commits it reads in a cache of up to
    // 256 MiB for the life of a repository handle; a walk over a long
    // history (a repack of the Git cache) would fill it. A few MiB keep
    // the trees of the last revisions.
    // SAFETY: called before any other thread exists.
    unsafe {
        let _ = git2::opts::set_cache_max_size(4 * 1024 * 1024);
    }
    match tidegate::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(tidegate::cli::EXIT_ERROR)
        }
    }
}

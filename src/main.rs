//! The `fracture-cnn` command line.

mod cli;

use clap::Parser;
use cli::{Cli, Outcome};
use fracture_cnn::backend::gpu::GpuFault;
use std::process::ExitCode;

/// Restores the default action of SIGPIPE, so that `fracture-cnn ... | head` ends quietly when
/// `head` exits instead of failing on a write to the closed pipe.
fn quiet_broken_pipes() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default is async-signal-safe and done before
    // any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A bug, not a user error: one line naming it and where, without a backtrace.
fn report_panics_briefly() {
    std::panic::set_hook(Box::new(|info| {
        if info.payload().is::<GpuFault>() {
            return; // caught and reported by the command (see `on_gpu`)
        }
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{at}: {what} (please report this as a bug)");
    }));
}

fn main() -> ExitCode {
    fracture_cnn::backend::cpu::keep_freed_memory();
    quiet_broken_pipes();
    report_panics_briefly();
    let result = cli::run(Cli::parse());
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        // 128 + SIGINT, as shells report a program stopped by Ctrl-C
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

//! Deterministic fault injection, for the fault tests: environment variables that make a fault
//! land at an exact point, where a kill or a signal sent from outside lands wherever chance puts it.
//!
//! - `FRACTURE_FAULT_CUT_WRITE=NAME:K`: the process dies, as if killed, after writing the first
//!   `K` bytes of the temporary file of its next write of a file named `NAME` (for example
//!   `last.safetensors:4096`). Exit code [`CUT_WRITE_EXIT`].
//! - `FRACTURE_FAULT_STOP_AFTER_STEP=K`: training stops as Ctrl-C stops it (the run saved, exit
//!   130) once optimiser step `K` is done, wherever in an epoch that is.
//!
//! (The GPU backend has its own: `FRACTURE_GPU_FAULT_AT_SYNC`, in `backend/gpu/context.rs`.)

use std::path::Path;

/// The exit code of a process killed by `FRACTURE_FAULT_CUT_WRITE`.
pub const CUT_WRITE_EXIT: i32 = 86;

/// How many bytes of `path` to write before dying, if `FRACTURE_FAULT_CUT_WRITE` names its file.
pub fn cut_write_at(path: &Path) -> Option<usize> {
    let hook = std::env::var("FRACTURE_FAULT_CUT_WRITE").ok()?;
    let (name, bytes) = hook.rsplit_once(':')?;
    let file = path.file_name()?.to_str()?;
    (file == name).then(|| bytes.parse().ok()).flatten()
}

/// Dies as a kill would: no destructor, no clean-up, nothing flushed but what was written.
pub fn die_mid_write(path: &Path, written: usize) -> ! {
    eprintln!(
        "fault injected: killed after {written} bytes of the write of {}",
        path.display()
    );
    std::process::exit(CUT_WRITE_EXIT)
}

/// Whether training should stop after optimiser step `step` (`FRACTURE_FAULT_STOP_AFTER_STEP`).
pub fn stop_after_step(step: u64) -> bool {
    std::env::var("FRACTURE_FAULT_STOP_AFTER_STEP")
        .ok()
        .and_then(|k| k.parse::<u64>().ok())
        == Some(step)
}

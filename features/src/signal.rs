//! Signals a test sends to processes: ones it started, or workers its hive started that the log
//! names by pid. The one place the harness calls `kill(2)`.

/// What a test asks a process to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ctrl+C.
    Interrupt,
    /// Stop gracefully.
    Terminate,
    /// Die now, no clean-up.
    Kill,
    /// Freeze (no CPU, no I/O) until continued.
    Stop,
    /// Unfreeze.
    Continue,
    /// Read the configuration again.
    Hangup,
}

impl Signal {
    fn number(self) -> i32 {
        match self {
            Signal::Interrupt => libc::SIGINT,
            Signal::Terminate => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Continue => libc::SIGCONT,
            Signal::Hangup => libc::SIGHUP,
        }
    }
}

/// Sends `signal` to process `pid`. False when there is no such process (it already ended).
pub fn send(pid: u32, signal: Signal) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    // SAFETY: kill(2) takes no pointers; a positive pid names one process.
    pid > 0 && unsafe { libc::kill(pid, signal.number()) } == 0
}

/// Sends `signal` to every process of the group `pgid` (a command started in a group of its own).
pub fn send_to_group(pgid: u32, signal: Signal) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else { return false };
    // SAFETY: kill(2) takes no pointers; a negative pid names the process group.
    pgid > 0 && unsafe { libc::kill(-pgid, signal.number()) } == 0
}

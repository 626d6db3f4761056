//! Runtimes: the only module that names monoio's drivers.
//!
//! Each core runs one monoio runtime on its own thread. io_uring is preferred; where the
//! kernel or a seccomp profile refuses it, the legacy epoll driver runs instead and a warning
//! says so.
#![allow(unsafe_code)]

use std::{future::Future, io};

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use tracing::{info, warn};

use crate::config::DriverChoice;

/// io_uring submission queue entries per core.
const URING_ENTRIES: u32 = 4096;

/// The io driver a core runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Linux io_uring.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl Driver {
    /// The `driver` label value.
    pub fn label(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// Why no runtime could be started.
#[derive(Debug, thiserror::Error)]
pub enum RtError {
    /// `RINGGATE_IO_DRIVER=io_uring` but the kernel refuses it.
    #[error("io_uring was requested (RINGGATE_IO_DRIVER=io_uring) but is not available: {0}")]
    UringUnavailable(String),
}

/// Picks the driver: io_uring when chosen or available, epoll otherwise, logging the choice.
pub fn select_driver(choice: DriverChoice) -> Result<Driver, RtError> {
    let driver = match choice {
        DriverChoice::Epoll => Driver::Epoll,
        DriverChoice::IoUring => match probe_uring() {
            Ok(()) => Driver::IoUring,
            Err(e) => return Err(RtError::UringUnavailable(e)),
        },
        DriverChoice::Auto => match probe_uring() {
            Ok(()) => Driver::IoUring,
            Err(reason) => {
                warn!(%reason, "io_uring refused; falling back to epoll");
                Driver::Epoll
            }
        },
    };
    info!(driver = driver.label(), "io driver selected");
    Ok(driver)
}

/// Checks that io_uring has every opcode monoio needs and that a ring can be built here.
fn probe_uring() -> Result<(), String> {
    if !monoio::utils::detect_uring() {
        return Err("io_uring setup or an opcode monoio needs is refused by the kernel".into());
    }
    RuntimeBuilder::<IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .build()
        .map(drop)
        .map_err(|e| format!("cannot build a ring of {URING_ENTRIES} entries: {e}"))
}

/// Runs the future `make()` returns on a new runtime of `driver` on this thread.
pub fn block_on<F, Fut>(driver: Driver, make: F) -> io::Result<Fut::Output>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    match driver {
        Driver::IoUring => {
            let mut rt = RuntimeBuilder::<IoUringDriver>::new()
                .with_entries(URING_ENTRIES)
                .enable_timer()
                .build()?;
            Ok(rt.block_on(make()))
        }
        Driver::Epoll => {
            let mut rt = RuntimeBuilder::<LegacyDriver>::new()
                .enable_timer()
                .build()?;
            Ok(rt.block_on(make()))
        }
    }
}

/// Pins this thread to CPU `core` modulo the CPUs the process may use.
pub fn pin_to_cpu(core: usize) {
    let cpus = crate::config::available_cores();
    let cpu = core % cpus.max(1);
    if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
        warn!(core, cpu, error = ?e, "could not pin core thread to its CPU");
    }
}

/// Raises the open-file soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

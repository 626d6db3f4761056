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
    /// Linux io_uring; `cooperative` when the kernel took `uring_runtime`'s cooperative
    /// flags.
    IoUring {
        /// Rings run completions' task work cooperatively (no interrupt per completion).
        cooperative: bool,
    },
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl Driver {
    /// The `driver` label value.
    pub fn label(self) -> &'static str {
        match self {
            Driver::IoUring { .. } => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// A core's io_uring runtime builder. `cooperative` rings are set up for a core that only
/// its own thread uses (Linux 6.0 and later): `IORING_SETUP_COOP_TASKRUN` runs the task work
/// that turns socket readiness into completions when the core's thread next enters the
/// kernel, which it does at every turn of its event loop, instead of interrupting it for
/// each one; `IORING_SETUP_SINGLE_ISSUER` tells the kernel only that thread submits. At
/// 15,000 proxied requests per second this cut ringgate's kernel time per request from
/// 28.6-32 µs to 18.1-25 µs (bench/RESULTS.md, "Cooperative io_uring rings").
fn uring_runtime(cooperative: bool) -> RuntimeBuilder<IoUringDriver> {
    let mut urb = io_uring::IoUring::builder();
    if cooperative {
        urb.setup_coop_taskrun().setup_single_issuer();
    }
    RuntimeBuilder::<IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .uring_builder(urb)
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
            Ok(cooperative) => Driver::IoUring { cooperative },
            Err(e) => return Err(RtError::UringUnavailable(e)),
        },
        DriverChoice::Auto => match probe_uring() {
            Ok(cooperative) => Driver::IoUring { cooperative },
            Err(reason) => {
                warn!(%reason, "io_uring refused; falling back to epoll");
                Driver::Epoll
            }
        },
    };
    match driver {
        Driver::IoUring { cooperative } => info!(
            driver = driver.label(),
            cooperative,
            "io driver selected{}",
            if cooperative {
                ""
            } else {
                " (the kernel refused cooperative task running: plain rings)"
            }
        ),
        Driver::Epoll => info!(driver = driver.label(), "io driver selected"),
    }
    Ok(driver)
}

/// Checks that io_uring has every opcode monoio needs and that a ring can be built here;
/// `Ok(true)` when a cooperative ring can be built too (older kernels refuse its flags).
fn probe_uring() -> Result<bool, String> {
    if !monoio::utils::detect_uring() {
        return Err("io_uring setup or an opcode monoio needs is refused by the kernel".into());
    }
    if uring_runtime(true).build().is_ok() {
        return Ok(true);
    }
    uring_runtime(false)
        .build()
        .map(|_| false)
        .map_err(|e| format!("cannot build a ring of {URING_ENTRIES} entries: {e}"))
}

/// Runs the future `make()` returns on a new runtime of `driver` on this thread.
pub fn block_on<F, Fut>(driver: Driver, make: F) -> io::Result<Fut::Output>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    match driver {
        Driver::IoUring { cooperative } => {
            let mut rt = uring_runtime(cooperative).enable_timer().build()?;
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

/// The CPUs this thread may run on (its affinity mask, inherited from the process), in
/// ascending order; empty if the kernel would not say.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and sched_getaffinity
    // writes at most `size_of::<cpu_set_t>()` bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the set's capacity.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// The CPU core `core` runs on: the core-th of the `allowed` CPUs, wrapping around.
fn cpu_for_core(core: usize, allowed: &[usize]) -> Option<usize> {
    (!allowed.is_empty()).then(|| allowed[core % allowed.len()])
}

/// Pins this thread to the core-th CPU of `allowed` (the process's CPUs from
/// [`allowed_cpus`]), so that `taskset` or a cpuset around the process is respected.
pub fn pin_to_cpu(core: usize, allowed: &[usize]) {
    let Some(cpu) = cpu_for_core(core, allowed) else {
        warn!(
            core,
            "could not read the process's CPUs; core thread not pinned"
        );
        return;
    };
    if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
        warn!(core, cpu, error = ?e, "could not pin core thread to its CPU");
    }
}

/// Whether this binary is linked statically (`scripts/build-static`: glibc, `+crt-static`).
pub const STATIC_BINARY: bool = cfg!(target_feature = "crt-static");

/// In the static binary, has host lookups use glibc's built-in services only: `files`
/// (`/etc/hosts`) and `dns` (`/etc/resolv.conf`), whatever `/etc/nsswitch.conf` lists.
/// A static glibc binary cannot rely on NSS modules: it would `dlopen` the host's
/// `libnss_*.so` (mdns, resolve, myhostname, sss...), built against whatever glibc the
/// host has. Since glibc 2.34 `files` and `dns` are part of libc itself, so with this a
/// lookup opens no module at all. Returns whether the services were set (always false in
/// a dynamically linked binary, which uses NSS as configured). Call before any lookup.
pub fn pin_static_name_services() -> bool {
    #[cfg(all(target_env = "gnu", target_feature = "crt-static"))]
    {
        extern "C" {
            fn __nss_configure_lookup(
                db: *const libc::c_char,
                service_line: *const libc::c_char,
            ) -> libc::c_int;
        }
        // SAFETY: both arguments are NUL-terminated strings that outlive the call; glibc
        // copies what it keeps. Called at start, before any thread looks a name up.
        unsafe { __nss_configure_lookup(c"hosts".as_ptr(), c"files dns".as_ptr()) == 0 }
    }
    #[cfg(not(all(target_env = "gnu", target_feature = "crt-static")))]
    {
        false
    }
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`). Memory that
/// comes and goes with connections (a TLS connection's buffers take 32 KiB) is handed back
/// to the kernel by the allocator a second after it is freed; with huge pages, the next
/// touch of each such region has the kernel zero 2 MiB at once. During a reconnect storm
/// that zeroing took 8-12% of a core's time, 0.4% without huge pages (bench/RESULTS.md).
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

    use super::*;

    /// Linux 6.0 or later (where `IORING_SETUP_SINGLE_ISSUER` exists).
    fn kernel_6_or_later() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        release
            .split('.')
            .next()
            .and_then(|major| major.parse::<u32>().ok())
            .is_some_and(|major| major >= 6)
    }

    #[test]
    fn huge_pages_are_turned_off_for_the_process() {
        disable_transparent_huge_pages().unwrap();
        // SAFETY: PR_GET_THP_DISABLE takes no pointer.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(disabled, 1);
    }

    #[test]
    fn cores_are_pinned_to_the_process_cpus_in_turn() {
        assert_eq!(cpu_for_core(0, &[2, 5]), Some(2));
        assert_eq!(cpu_for_core(1, &[2, 5]), Some(5));
        assert_eq!(cpu_for_core(2, &[2, 5]), Some(2));
        assert_eq!(cpu_for_core(0, &[]), None);
    }

    #[test]
    fn allowed_cpus_are_this_threads_affinity() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
        // SAFETY: sched_getcpu has no preconditions.
        let now_on = unsafe { libc::sched_getcpu() };
        assert!(
            cpus.contains(&(now_on as usize)),
            "{now_on} not in {cpus:?}"
        );
    }

    #[test]
    fn cooperative_rings_are_chosen_where_the_kernel_takes_them() {
        if !monoio::utils::detect_uring() {
            eprintln!("io_uring refused here: nothing to check");
            return;
        }
        let driver = select_driver(DriverChoice::IoUring).unwrap();
        assert_eq!(
            driver,
            Driver::IoUring {
                cooperative: kernel_6_or_later()
            }
        );
    }

    #[test]
    fn a_cooperative_ring_serves_sockets_and_wakes_for_other_threads() {
        if !monoio::utils::detect_uring() || !kernel_6_or_later() {
            eprintln!("no cooperative rings here: nothing to check");
            return;
        }
        let (tx, rx) = flume::bounded::<u8>(1);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(7).unwrap();
        });
        let (echoed, from_thread) =
            block_on(Driver::IoUring { cooperative: true }, || async move {
                let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                monoio::spawn(async move {
                    let (mut s, _) = listener.accept().await.unwrap();
                    let (res, buf) = s.read(vec![0u8; 16]).await;
                    let n = res.unwrap();
                    let _ = s.write_all(buf[..n].to_vec()).await;
                });
                let mut c = monoio::net::TcpStream::connect(addr).await.unwrap();
                let (res, _) = c.write_all(b"ping".to_vec()).await;
                res.unwrap();
                let (res, buf) = c.read(vec![0u8; 16]).await;
                let n = res.unwrap();
                // Woken by another thread while parked in the ring.
                let from_thread = rx.recv_async().await.unwrap();
                (buf[..n].to_vec(), from_thread)
            })
            .unwrap();
        sender.join().unwrap();
        assert_eq!((echoed.as_slice(), from_thread), (&b"ping"[..], 7));
    }
}

//! An accept that fails for a moment (the daemon is out of file
//! descriptors) must not end the listener: it used to return the error to
//! the milter library, whose accept loop then ended, and the daemon with it.
//!
//! The daemon is the real binary in a process of its own; the test lowers
//! that process's open-file limit from outside (prlimit(2)), so nothing
//! else in the test binary runs short of descriptors.

use crate::common;

use common::daemon::LISTEN;
use common::serve::{Serve, start_message};
use std::time::Duration;

fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// The process's soft open-file limit; with `set`, changed to that first.
fn soft_limit(pid: u32, set: Option<u64>) -> u64 {
    let pid = libc::pid_t::try_from(pid).expect("a pid");
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let new = set.map(|soft| {
        // The hard limit stays: prlimit needs both, so read it first.
        // SAFETY: prlimit reads no new limit and writes the struct we pass.
        unsafe {
            assert_eq!(
                libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old),
                0
            );
        }
        libc::rlimit {
            rlim_cur: soft.min(old.rlim_max),
            rlim_max: old.rlim_max,
        }
    });
    let new_ptr = new.as_ref().map_or(std::ptr::null(), |n| n as *const _);
    // SAFETY: prlimit reads the struct behind `new_ptr` (or nothing) and
    // writes `old`; both live across the call.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, new_ptr, &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

#[tokio::test]
async fn out_of_file_descriptors_the_listener_waits_and_goes_on() {
    let mut serve = Serve::start_with(&format!(
        "[server]\nlog_format = \"json\"\n{LISTEN}[pipelines.mx]\n"
    ));
    let addr = serve.ready().await;
    let pid = serve.child.id();

    // No room for one more descriptor: the daemon's accept of the next
    // connection fails with EMFILE.
    let before = soft_limit(pid, Some(open_files(pid)));
    let client = std::net::TcpStream::connect(addr).expect("connect (queued by the kernel)");
    serve
        .wait_for_containing("cannot accept a connection now; trying again shortly")
        .await;
    soft_limit(pid, Some(before));
    drop(client);

    // The listener is still there: a whole session is served.
    let session = start_message(addr, None);
    tokio::time::timeout(Duration::from_secs(5), session)
        .await
        .expect("the listener must still accept connections");
    assert!(serve.alive(), "{}", serve.log());
}

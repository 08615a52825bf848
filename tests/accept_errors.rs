//! An accept that fails for a moment (the process is out of file
//! descriptors) must not end the listener: it used to return the error to
//! the milter library, whose accept loop then ended, and the daemon with it.
//! This test lowers its own process's open-file limit, so it has a file of
//! its own (a test binary is one process).

mod common;

use common::daemon::{LISTEN, TestDaemon, greet, open};
use indymilter_test::Status;
use std::time::Duration;

fn open_files() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

fn set_soft_limit(soft: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = soft.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_listener_waits_and_goes_on() {
    let d = TestDaemon::start(&format!("{LISTEN}[pipelines.mx]\n")).await;
    let addr = d.addr();
    let mut before = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    unsafe { assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut before), 0) };

    // Room for exactly four more descriptors: four client sockets take it,
    // and the daemon's accept of their connections finds none left.
    set_soft_limit(open_files() + 4);
    let mut clients: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect (queued by the kernel)"))
        .collect();
    // Let the daemon try, fail, and back off a few times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    clients.clear();
    set_soft_limit(before.rlim_cur);

    // The listener is still there: a whole session is served.
    let session = async {
        let mut conn = open(addr).await;
        greet(&mut conn, "mx").await;
        conn.mail(["<a@example.net>"]).await.expect("mail")
    };
    let status = tokio::time::timeout(Duration::from_secs(5), session)
        .await
        .expect("the listener must still accept connections");
    assert_eq!(status, Status::Continue);
}

//! Makes a known number of syscalls and reports its own timings.
//!
//! Protocol, so a test can attach probes at a known moment: set the comm
//! (`--name`), print `ready`, block in `read(0)` until a line arrives, then
//! run the workload and print one JSON [`LoadReport`] line.
//!
//! `--rate R --seconds S` paces getppid at R calls per second for S seconds.
//! `--fail N` makes N failing syscalls (`close(-1)`); `--hold` blocks in
//! `read(0)` again after the report until a second line or EOF.
//! `--cpu K` pins it to one CPU (benchmarks). Syscalls are issued with `libc::syscall` so libc cannot substitute
//! another (glibc's `nanosleep()` calls `clock_nanosleep`).

use std::io::{BufRead, Write};

use ringwarden_e2e::{LoadReport, arg, clock_ns, pin_to_cpu};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let getppid = arg("--getppid", 0);
    let sleeps = arg("--nanosleep", 0);
    let sleep_ns = arg("--nanosleep-ns", 2_000_000);
    let forks = arg("--forks", 0);
    let fails = arg("--fail", 0);
    // Paced mode: this many getppid per second for `--seconds`.
    let rate = arg("--rate", 0);
    let seconds = arg("--seconds", 0);
    // Every other sleep lasts this long instead, for threshold tests.
    let alt_ns = arg("--nanosleep-alt-ns", sleep_ns);
    if let Some(i) = args.iter().position(|a| a == "--cpu") {
        pin_to_cpu(args[i + 1].parse().expect("--cpu takes a CPU number"));
    }
    if let Some(i) = args.iter().position(|a| a == "--name") {
        let name = std::ffi::CString::new(args[i + 1].as_str()).expect("name without NUL");
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }

    let stdout = std::io::stdout();
    writeln!(stdout.lock(), "ready").unwrap();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();

    // Thread CPU time excludes time the scheduler gave to others.
    let c0 = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    for _ in 0..getppid {
        // SAFETY: getppid takes no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    let mut paced = 0;
    if rate > 0 {
        // 1 ms ticks on the absolute clock, so pacing errors do not add up.
        let per_tick = rate / 1000;
        let start = clock_ns(libc::CLOCK_MONOTONIC);
        for tick in 0..seconds * 1000 {
            for _ in 0..per_tick {
                // SAFETY: as above.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            paced += per_tick;
            let next = start + (tick + 1) * 1_000_000;
            let wake = libc::timespec {
                tv_sec: (next / 1_000_000_000) as libc::time_t,
                tv_nsec: (next % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: valid request pointer; absolute sleep on CLOCK_MONOTONIC.
            unsafe {
                libc::clock_nanosleep(
                    libc::CLOCK_MONOTONIC,
                    libc::TIMER_ABSTIME,
                    &wake,
                    std::ptr::null_mut(),
                )
            };
        }
    }
    let getppid_cpu_ns = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - c0;
    let mut nanosleep_ns = Vec::with_capacity(sleeps as usize);
    let ts = |ns: u64| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    for i in 0..sleeps {
        let req = ts(if i % 2 == 1 { alt_ns } else { sleep_ns });
        let t0 = clock_ns(libc::CLOCK_MONOTONIC);
        // SAFETY: valid request pointer; a null remainder is allowed.
        unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &req,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        nanosleep_ns.push(clock_ns(libc::CLOCK_MONOTONIC) - t0);
    }
    for _ in 0..fails {
        // SAFETY: closing an invalid fd only returns EBADF.
        unsafe { libc::syscall(libc::SYS_close, -1) };
    }
    for _ in 0..forks {
        // SAFETY: the child only calls async-signal-safe _exit.
        match unsafe { libc::fork() } {
            0 => unsafe { libc::_exit(0) },
            -1 => panic!("fork failed"),
            child => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
            }
        }
    }
    let report = LoadReport {
        pid: std::process::id(),
        getppid_calls: getppid + paced,
        getppid_cpu_ns,
        forks,
        fails,
        nanosleep_ns,
    };
    writeln!(stdout.lock(), "{}", serde_json::to_string(&report).unwrap()).unwrap();
    if args.iter().any(|a| a == "--hold") {
        // Stay (blocked in read) until told, so the test reads the kernel's
        // figures while this process is quiet.
        line.clear();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
}

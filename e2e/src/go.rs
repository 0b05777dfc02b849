//! The Go program the Go tests and `bench-go` trace (`e2e/go/target`),
//! built with Debian's Go (`golang-1.19-go`, installed by `make deps`).

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{ChildStdout, Command, Stdio},
};

use serde_json::Value;

/// Debian's Go 1.19.
pub const GO: &str = "/usr/lib/go-1.19/bin/go";

/// Builds `e2e/go/target` in `dir`: (with symbols, stripped). Fails
/// with the fix when Go is missing.
pub fn build_target(dir: &Path) -> (PathBuf, PathBuf) {
    assert!(
        Path::new(GO).exists(),
        "{GO} is missing: the Go tests build their target with Debian's golang-1.19-go; \
             run `sudo make deps`"
    );
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/go/target/main.go"),
        dir.join("main.go"),
    )
    .unwrap();
    std::fs::write(dir.join("go.mod"), "module gotarget\n\ngo 1.19\n").unwrap();
    let build = |out: &str, ldflags: &str| {
        let o = Command::new(GO)
            .args(["build", "-trimpath", "-ldflags", ldflags, "-o", out, "."])
            .current_dir(dir)
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("gopath"))
            .env("HOME", dir)
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("CGO_ENABLED", "0")
            .output()
            .unwrap_or_else(|e| panic!("run {GO}: {e}"));
        assert!(
            o.status.success(),
            "go build failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        dir.join(out)
    };
    (build("gotarget", ""), build("gotarget-stripped", "-s -w"))
}

/// The Go program, started and waiting for `go` on stdin.
pub struct GoChild {
    child: std::process::Child,
    stdout: BufReader<ChildStdout>,
}

impl GoChild {
    pub fn spawn(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Self { child, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs the workload; returns its report once the program exited
    /// normally.
    pub fn run(mut self) -> Value {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the Go program failed: {status}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("report {line:?}: {e}"))
    }
}

//! The Go programs' user-space side: the pairing maps swept of processes
//! that exited, and the names of the `goRuntime` series.

use std::path::Path;

use aya::maps::{HashMap, MapData};
use ringwarden_ebpf_common::{
    GO_SERIES_GC_CYCLE, GO_SERIES_GC_PAUSE, GO_SERIES_STW_OTHER, GoFrames, GoKey, GoRuntimeState,
};

use super::Probe;

/// The Go programs' pairing maps, swept of processes that exited (see
/// [`Probe::sweep_exited`]).
#[derive(Default)]
pub(super) struct GoMaps {
    pub(super) start: Option<HashMap<MapData, GoKey, GoFrames>>,
    pub(super) runtime: Option<HashMap<MapData, u32, GoRuntimeState>>,
    /// Calls, stops and cycles whose process exited before they ended,
    /// counted as the sweep removes them: observed and pairing-dropped.
    pub(super) swept: u64,
    last_sweep: Option<std::time::Instant>,
}

impl GoMaps {
    /// Whether a sweep is due: Go maps exist and a second has passed (a
    /// drain runs every ~100 ms; a sweep walks the map's keys).
    pub(super) fn sweep_due(&mut self) -> bool {
        if self.start.is_none() && self.runtime.is_none() {
            return false;
        }
        let now = std::time::Instant::now();
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1))
        {
            return false;
        }
        self.last_sweep = Some(now);
        true
    }
}

/// Whether process `pid` still runs, in the pid namespace of `/proc` (the
/// host's: the agent runs with hostPID).
pub fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

impl Probe {
    /// Removes the Go pairing state of processes that have exited, counting
    /// each call, stop or cycle they left unfinished as observed and
    /// pairing-dropped. A live goroutine's state needs no sweep: it is
    /// removed at its last return, and a call that unwound without
    /// returning is found at the goroutine's next call (`golang.rs`).
    /// `alive` says whether a process id still runs (`/proc/<pid>`, with
    /// the host's pid namespace).
    pub fn sweep_exited(&mut self, alive: impl Fn(u32) -> bool) -> u64 {
        let mut swept = 0;
        if let Some(start) = &mut self.go_maps.start {
            let dead: Vec<GoKey> = start
                .keys()
                .filter_map(Result::ok)
                .filter(|k| !alive(k.tgid))
                .collect();
            for key in dead {
                if let Ok(frames) = start.get(&key, 0)
                    && start.remove(&key).is_ok()
                {
                    swept += frames.frames.iter().filter(|f| f.ts_ns != 0).count() as u64;
                }
            }
        }
        if let Some(runtime) = &mut self.go_maps.runtime {
            let dead: Vec<u32> = runtime
                .keys()
                .filter_map(Result::ok)
                .filter(|tgid| !alive(*tgid))
                .collect();
            for tgid in dead {
                if let Ok(state) = runtime.get(&tgid, 0)
                    && runtime.remove(&tgid).is_ok()
                {
                    swept += u64::from(state.stw_ts_ns != 0)
                        + u64::from(state.cycle_ts_ns != 0 || state.cycle_pending != 0);
                }
            }
        }
        self.go_maps.swept += swept;
        swept
    }
}

/// The series of a `goRuntime` probe, by name (each per process, shown
/// as `gc-pause (pid 4242)`; an SLO names them without the process).
pub const GO_RUNTIME_SERIES: [(&str, u64); 3] = [
    ("gc-pause", GO_SERIES_GC_PAUSE),
    ("stw-other", GO_SERIES_STW_OTHER),
    ("gc-cycle", GO_SERIES_GC_CYCLE),
];

/// The kernel's series id of a `goRuntime` series name.
pub fn go_runtime_series_id(name: &str) -> Option<u64> {
    GO_RUNTIME_SERIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, id)| *id)
}

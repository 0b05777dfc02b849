//! The simulated agents and the latencies they report.

use super::*;

/// A cheap deterministic generator of latencies.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Roughly log-normal: most events within two octaves of 64 µs, tails
    /// from 4 µs to 1 ms, as a syscall or a connect on a busy node. Over
    /// minutes a series fills 100 to 200 buckets.
    pub(crate) fn latency(&mut self) -> u64 {
        let sum: u64 = (0..4).map(|_| self.next() % 1024).sum();
        let octaves = sum as f64 / 4096.0 * 8.0;
        (4096.0 * octaves.exp2()) as u64
    }
}

/// The latencies every agent reports: one population of series, grown
/// continuously and shared, so the driver's cost does not grow with agents
/// × series and its own CPU stays out of the round trips it measures. The
/// operator does not compare nodes' histograms; identical ones cost it what
/// different ones would.
pub(crate) struct Population {
    /// Per probe, per series: cumulative bucket counts, sum and max.
    dense: Vec<Vec<(Vec<u64>, u64, u64)>>,
    rng: XorShift,
    /// Events added so far per series, and how many of them within the
    /// SLOs' 5 ms.
    events: u64,
    good: u64,
    /// The histograms as reports carry them, per probe.
    wire: Arc<Vec<Vec<v1::SeriesHistogram>>>,
}

impl Population {
    /// Series that already ran for a while: a few thousand events each,
    /// 100 to 200 buckets populated.
    pub(crate) fn new(probes: usize, series: usize) -> Self {
        let mut p = Self {
            dense: vec![vec![(vec![0; HIST_BUCKETS], 0, 0); series]; probes],
            rng: XorShift(0x9e37_79b9_7f4a_7c15),
            events: 0,
            good: 0,
            wire: Arc::new(Vec::new()),
        };
        p.add(2_000);
        p
    }

    /// Adds `n` events to every series.
    pub(crate) fn add(&mut self, n: usize) {
        for probe in &mut self.dense {
            for (buckets, sum, max) in probe.iter_mut() {
                for _ in 0..n {
                    let ns = self.rng.latency();
                    buckets[bucket_index(ns) as usize] += 1;
                    *sum += ns;
                    *max = (*max).max(ns);
                }
            }
        }
        // Every series gets the same number; count the good ones in one.
        self.events += n as u64;
        self.good += n as u64; // latencies stay below 5 ms (see `latency`)
        self.wire = Arc::new(
            self.dense
                .iter()
                .map(|probe| {
                    probe
                        .iter()
                        .enumerate()
                        .map(|(s, (buckets, sum, max))| {
                            let (index, count): (Vec<u32>, Vec<u64>) = buckets
                                .iter()
                                .enumerate()
                                .filter(|(_, n)| **n > 0)
                                .map(|(i, n)| (i as u32, *n))
                                .unzip();
                            v1::SeriesHistogram {
                                series: format!("s{s}"),
                                histogram: Some(v1::Histogram {
                                    bucket_index: index,
                                    bucket_count: count,
                                    sum_ns: *sum,
                                    max_ns: *max,
                                    errors: 0,
                                }),
                            }
                        })
                        .collect()
                })
                .collect(),
        );
    }
}

/// One simulated agent.
pub(crate) struct Agent {
    pub(crate) endpoint: Endpoint,
    pub(crate) i: usize,
    pub(crate) point: Point,
    pub(crate) interval: Duration,
    pub(crate) seen: Arc<Mutex<Seen>>,
    pub(crate) measuring: Arc<AtomicBool>,
    pub(crate) population: Arc<Mutex<Population>>,
}

impl Agent {
    pub(crate) async fn run(
        self,
        mut reconnect: tokio::sync::watch::Receiver<Option<Instant>>,
    ) -> Result<(), String> {
        let ids = (0..self.point.probes)
            .map(|p| ProbeRef {
                namespace: "bench".into(),
                probeset: "bench".into(),
                probe: format!("p{p}"),
            })
            .collect();
        let mut a = SimAgent::new(
            &format!("node-{}", self.i),
            &format!("boot-{}", self.i),
            ids,
        );
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (self.i as u64 + 1));
        let mut c = self.open(&a, &mut rng, false).await?;
        c.until_config(&mut a).await.map_err(|e| e.to_string())?;
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let report = self.report(&mut a);
                    let sent = Instant::now();
                    c.report(&mut a, report).await.map_err(|e| e.to_string())?;
                    let rtt = sent.elapsed();
                    if self.measuring.load(Ordering::SeqCst) {
                        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                        seen.round_trip
                            .record(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX));
                        seen.reports += 1;
                    }
                }
                Ok(()) = reconnect.changed() => {
                    let Some(dropped) = *reconnect.borrow_and_update() else {
                        continue;
                    };
                    drop(c);
                    c = self.open(&a, &mut rng, true).await?;
                    // The report the break interrupted, resent at once as
                    // an agent resends what it buffered.
                    let report = self.report(&mut a);
                    c.report(&mut a, report).await.map_err(|e| e.to_string())?;
                    let back = u64::try_from(dropped.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    self.seen.lock().unwrap_or_else(|e| e.into_inner()).reconnected.push(back);
                }
            }
        }
    }

    /// The next report: the population's histograms, and counters and
    /// threshold counts that agree with them.
    pub(crate) fn report(&self, a: &mut SimAgent) -> v1::Report {
        let (wire, events, good) = {
            let p = self.population.lock().unwrap_or_else(|e| e.into_inner());
            (Arc::clone(&p.wire), p.events, p.good)
        };
        let n = events * self.point.series as u64;
        for probe in &mut a.probes {
            probe.counters.observed = n;
            probe.counters.aggregated = n;
            for (_, _, g, total) in probe.exact.values_mut() {
                (*g, *total) = (good * self.point.series as u64, n);
            }
        }
        let mut report = a.report(ringwarden_operator::ingest::reports::millis(
            SystemTime::now(),
        ));
        for (p, histograms) in report.probes.iter_mut().zip(wire.iter()) {
            p.histograms.clone_from(histograms);
        }
        report
    }

    /// A new connection and an accepted stream, retried with the agent's
    /// backoff (`node-agent/src/uplink.rs`): full jitter over 1 s doubling
    /// to 30 s, at least 100 ms; after a lost stream it waits before the
    /// first attempt too.
    pub(crate) async fn open(
        &self,
        a: &SimAgent,
        rng: &mut XorShift,
        after_loss: bool,
    ) -> Result<sim::Connection, String> {
        let mut failures: u32 = 0;
        if after_loss {
            tokio::time::sleep(backoff(0, rng)).await;
        }
        loop {
            let attempt = async {
                let channel = self.endpoint.connect().await.map_err(|e| e.to_string())?;
                sim::connect(channel, Some(&format!("bench:{}", a.node)), a.hello())
                    .await
                    .map_err(|s| s.to_string())
            };
            match attempt.await {
                Ok(c) => return Ok(c),
                Err(e) if failures >= 20 => return Err(e),
                Err(_) => {
                    if after_loss {
                        self.seen.lock().unwrap_or_else(|e| e.into_inner()).retries += 1;
                    }
                    tokio::time::sleep(backoff(failures, rng)).await;
                    failures += 1;
                }
            }
        }
    }
}

pub(crate) fn backoff(failures: u32, rng: &mut XorShift) -> Duration {
    let cap = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.min(5))
        .min(Duration::from_secs(30));
    let fraction = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
    cap.mul_f64(fraction).max(Duration::from_millis(100))
}

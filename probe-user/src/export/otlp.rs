//! `--otlp URL`: finished timelines, as OpenTelemetry traces, to a collector over OTLP/HTTP
//! protobuf. The event loop only hands each timeline's spans to a bounded queue (never
//! waiting: a full queue counts the timeline as left out); a thread batches them (up to
//! [`BATCH_TIMELINES`] or [`BATCH_INTERVAL`]) and POSTs them. At exit the queue is flushed,
//! waiting at most [`FLUSH_WAIT`] for the collector. Everything left out, failed or unsent
//! is counted for the summary and said as it happens.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceResponse, trace::v1::Span,
};
use probe_pipeline::otlp::{self, Origin, SpanExport};
use prost::Message as _;
use schemars::JsonSchema;
use serde::Serialize;

use super::http::{self, Endpoint};

/// OTLP/HTTP's path for traces, used when the URL names none.
pub const TRACES_PATH: &str = "/v1/traces";
/// Timelines per request at most.
pub const BATCH_TIMELINES: usize = 512;
/// How long a timeline waits for others to share its request.
pub const BATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Connecting, writing and reading each wait at most this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long probe waits at exit for the last requests.
pub const FLUSH_WAIT: Duration = Duration::from_secs(6);
/// Timelines queued at most by default.
pub const DEFAULT_QUEUE: usize = 4096;
/// Between two warnings about the same trouble.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What `--otlp` was given.
#[derive(Clone, Debug)]
pub struct OtlpOptions {
    pub endpoint: Endpoint,
    /// Timelines the queue holds at most.
    pub queue: usize,
    /// A full queue makes the sink wait instead of leaving timelines out: for a replay, which
    /// has no kernel to keep up with.
    pub wait_when_full: bool,
}

impl OtlpOptions {
    /// `--otlp URL` (the path `/v1/traces` when the URL has none) and `--otlp-queue N`.
    pub fn parse(url: &str, queue: usize) -> anyhow::Result<Self> {
        Ok(OtlpOptions {
            endpoint: Endpoint::parse(url, TRACES_PATH)
                .map_err(|e| anyhow::anyhow!("--otlp {e}"))?,
            queue: queue.max(1),
            wait_when_full: false,
        })
    }
}

/// What the export did, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Report {
    /// Where the traces went.
    pub url: String,
    /// Timelines handed to the exporter.
    pub timelines: u64,
    /// Timelines the collector accepted (one trace each), and their spans.
    pub exported: u64,
    pub spans_exported: u64,
    /// Timelines left out because the queue was full (the collector, or the way to it, was
    /// slower than the traffic).
    pub queue_full: u64,
    /// Timelines whose request failed (unreachable, timed out, an HTTP error).
    pub failed: u64,
    /// Spans the collector accepted the request of but rejected (OTLP partial success).
    pub spans_rejected: u64,
    /// Timelines still queued or in flight when probe stopped waiting at exit.
    pub unsent: u64,
    /// The last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Report {
    /// `; OTLP to URL: 48 of 50 timelines exported (2 left out: the queue was full)`.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "OTLP to {}: {} of {} timelines exported ({} spans)",
            self.url, self.exported, self.timelines, self.spans_exported
        );
        let mut trouble = Vec::new();
        if self.queue_full > 0 {
            trouble.push(format!("{} LEFT OUT: the queue was full", self.queue_full));
        }
        if self.failed > 0 {
            trouble.push(format!(
                "{} FAILED: {}",
                self.failed,
                self.last_error.as_deref().unwrap_or("unknown error")
            ));
        }
        if self.unsent > 0 {
            trouble.push(format!(
                "{} UNSENT: the collector did not answer within {} s at exit",
                self.unsent,
                FLUSH_WAIT.as_secs()
            ));
        }
        if self.spans_rejected > 0 {
            trouble.push(format!(
                "{} spans rejected by the collector",
                self.spans_rejected
            ));
        }
        if !trouble.is_empty() {
            s.push_str(&format!("; {}", trouble.join("; ")));
        }
        s
    }
}

/// Counted by the queue (event loop) and the sending thread.
#[derive(Default)]
struct Counters {
    timelines: AtomicU64,
    queue_full: AtomicU64,
    exported: AtomicU64,
    spans_exported: AtomicU64,
    failed: AtomicU64,
    spans_rejected: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The exporter: its thread and what it counted. Cloned handles share one exporter.
#[derive(Clone)]
pub struct Exporter {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    counters: Arc<Counters>,
    /// Taken by [`Exporter::queue`] (one queue per exporter) and dropped at the end.
    tx: Mutex<Option<SyncSender<Vec<Span>>>>,
    worker: Mutex<Option<(JoinHandle<()>, mpsc::Receiver<()>)>>,
    wait: bool,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("url", &self.inner.url)
            .finish()
    }
}

impl Exporter {
    /// Starts the sending thread. Its sockets belong to the network namespace the process is
    /// in now: start it before entering another one (`--netns`), so the collector is reached
    /// from the host, not from the traced namespace.
    pub fn start(opts: &OtlpOptions, origin: Origin) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Vec<Span>>(opts.queue);
        let (done_tx, done_rx) = mpsc::channel();
        let wait = opts.wait_when_full;
        let counters = Arc::new(Counters::default());
        let sender = Sender {
            endpoint: opts.endpoint.clone(),
            origin,
            counters: counters.clone(),
            warned: None,
            said_full: 0,
        };
        let worker = std::thread::Builder::new()
            .name("probe-otlp".into())
            .spawn(move || {
                sender.run(rx);
                let _ = done_tx.send(());
            })
            .map_err(|e| anyhow::anyhow!("cannot start the OTLP exporter's thread: {e}"))?;
        Ok(Exporter {
            inner: Arc::new(Inner {
                url: opts.endpoint.url(),
                counters,
                tx: Mutex::new(Some(tx)),
                worker: Mutex::new(Some((worker, done_rx))),
                wait,
            }),
        })
    }

    /// The queue the sink hands timelines to (the first call takes it; later ones get a queue
    /// that counts every timeline as failed).
    pub fn queue(&self) -> Box<dyn SpanExport> {
        let tx = self.inner.tx.lock().ok().and_then(|mut t| t.take());
        Box::new(Queue {
            tx,
            counters: self.inner.counters.clone(),
            wait: self.inner.wait,
        })
    }

    /// Sends what is still queued (the queue must be dropped: the sink finished), waiting at
    /// most [`FLUSH_WAIT`], and reports.
    pub fn finish(&self) -> Report {
        if let Ok(mut t) = self.inner.tx.lock() {
            t.take();
        }
        let worker = self.inner.worker.lock().ok().and_then(|mut w| w.take());
        let mut finished = true;
        if let Some((handle, done)) = worker {
            match done.recv_timeout(FLUSH_WAIT) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                    let _ = handle.join();
                }
                // Left behind: it ends with the process.
                Err(RecvTimeoutError::Timeout) => finished = false,
            }
        }
        let c = &self.inner.counters;
        let mut r = Report {
            url: self.inner.url.clone(),
            timelines: c.timelines.load(Relaxed),
            exported: c.exported.load(Relaxed),
            spans_exported: c.spans_exported.load(Relaxed),
            queue_full: c.queue_full.load(Relaxed),
            failed: c.failed.load(Relaxed),
            spans_rejected: c.spans_rejected.load(Relaxed),
            unsent: 0,
            last_error: c.last_error.lock().ok().and_then(|e| e.clone()),
        };
        let settled = r.exported + r.failed + r.queue_full;
        if !finished || settled < r.timelines {
            r.unsent = r.timelines.saturating_sub(settled);
        }
        r
    }
}

/// The event loop's end of the queue: never blocks.
struct Queue {
    tx: Option<SyncSender<Vec<Span>>>,
    counters: Arc<Counters>,
    /// Wait for room instead of leaving the timeline out ([`OtlpOptions::wait_when_full`]).
    wait: bool,
}

impl SpanExport for Queue {
    fn export(&mut self, spans: Vec<Span>) {
        self.counters.timelines.fetch_add(1, Relaxed);
        let Some(tx) = &self.tx else {
            self.counters.failed.fetch_add(1, Relaxed);
            return;
        };
        if self.wait {
            if tx.send(spans).is_err() {
                self.counters.failed.fetch_add(1, Relaxed);
            }
            return;
        }
        match tx.try_send(spans) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counters.queue_full.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counters.failed.fetch_add(1, Relaxed);
            }
        }
    }
}

/// The sending thread.
struct Sender {
    endpoint: Endpoint,
    origin: Origin,
    counters: Arc<Counters>,
    /// When trouble was last said.
    warned: Option<Instant>,
    /// Left-out timelines already said.
    said_full: u64,
}

impl Sender {
    fn run(mut self, rx: mpsc::Receiver<Vec<Span>>) {
        let mut batch: Vec<Vec<Span>> = Vec::new();
        let mut due: Option<Instant> = None;
        loop {
            let wait = due.map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
            match rx.recv_timeout(wait) {
                Ok(spans) => {
                    if batch.is_empty() {
                        due = Some(Instant::now() + BATCH_INTERVAL);
                    }
                    batch.push(spans);
                    if batch.len() >= BATCH_TIMELINES {
                        self.send(std::mem::take(&mut batch));
                        due = None;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.send(std::mem::take(&mut batch));
                    due = None;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // The trace ended: what is queued goes now.
                    self.send(batch);
                    return;
                }
            }
            self.say_left_out();
        }
    }

    fn send(&mut self, batch: Vec<Vec<Span>>) {
        if batch.is_empty() {
            return;
        }
        let timelines = batch.len() as u64;
        let spans: Vec<Span> = batch.into_iter().flatten().collect();
        let n_spans = spans.len() as u64;
        let body = otlp::encode(&otlp::request(&self.origin, spans));
        let result = http::post(
            &self.endpoint,
            "application/x-protobuf",
            &body,
            REQUEST_TIMEOUT,
        );
        let error = match result {
            Ok(r) if (200..300).contains(&r.status) => {
                self.counters.exported.fetch_add(timelines, Relaxed);
                self.counters.spans_exported.fetch_add(n_spans, Relaxed);
                // A partial success names the spans the collector did not take.
                if let Ok(answer) = ExportTraceServiceResponse::decode(r.body.as_slice())
                    && let Some(p) = answer.partial_success
                    && p.rejected_spans > 0
                {
                    let rejected = u64::try_from(p.rejected_spans).unwrap_or(0);
                    self.counters.spans_rejected.fetch_add(rejected, Relaxed);
                    self.trouble(format!(
                        "the collector at {} rejected {rejected} spans: {}",
                        self.endpoint.url(),
                        p.error_message
                    ));
                }
                return;
            }
            Ok(r) => format!("HTTP {} from {}", r.status, self.endpoint.url()),
            Err(e) => e.to_string(),
        };
        self.counters.failed.fetch_add(timelines, Relaxed);
        if let Ok(mut last) = self.counters.last_error.lock() {
            *last = Some(error.clone());
        }
        self.trouble(format!(
            "{timelines} timelines could not be exported over OTLP: {error}"
        ));
    }

    fn say_left_out(&mut self) {
        let full = self.counters.queue_full.load(Relaxed);
        if full > self.said_full
            && self.trouble(format!(
                "{} timelines left out of the OTLP export: its queue was full (the collector \
                 is slower than the traffic; a --filter or a larger --otlp-queue helps)",
                full - self.said_full
            ))
        {
            self.said_full = full;
        }
    }

    /// Says `what` unless trouble was said less than [`WARN_EVERY`] ago; whether it was said.
    fn trouble(&mut self, what: String) -> bool {
        let now = Instant::now();
        if self
            .warned
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            return false;
        }
        self.warned = Some(now);
        log::warn!("{what}");
        true
    }
}

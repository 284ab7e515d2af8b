//! What one io mode's traced run comes to: per-stage figures read from the trace's summary,
//! and what each stage means. Read by [`crate::trace`], drawn by [`crate::timeline_svg`].

/// One stage's figures (a row of the table).
#[derive(Debug, Clone, PartialEq)]
pub struct StageStat {
    /// The point that ends the stage (e.g. `BackendComplete`), or `total`.
    pub stage: String,
    /// Requests with this stage.
    pub count: u64,
    /// Mean, microseconds.
    pub mean_us: f64,
    /// Median, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Share of the total request time (0..=1).
    pub share: f64,
}

/// One io mode's traced run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModeTrace {
    /// The io mode.
    pub mode: String,
    /// Stages in request order.
    pub stages: Vec<StageStat>,
    /// The whole request.
    pub total: Option<StageStat>,
    /// Stages over the requests up to the 90th percentile of the total (no tail).
    pub typical: Vec<StageStat>,
    /// The whole request, over the same requests.
    pub typical_total: Option<StageStat>,
    /// Requests matched between the guest's log and the device's stamps.
    pub matched: u64,
    /// Stamps the device dropped (full log).
    pub dropped: u64,
    /// How the guest/host clocks were mapped, and how accurately (ns).
    pub mapping: String,
    /// The mapping's accuracy, ns (`None`: unmeasured).
    pub accuracy_ns: Option<f64>,
    /// The guest's own IOPS figure for the run.
    pub iops: Option<f64>,
    /// What the data say about the clock mapping: its error lies in this range (ns).
    pub error_bounds_ns: Option<(f64, f64)>,
}

/// What a stage means, for the table and the figure.
pub fn describe(stage: &str) -> &'static str {
    match stage {
        "GuestKick" => "guest: avail ring written -> kick",
        "KickSeen" => "kick -> serving thread awake",
        "Popped" => "-> chain popped",
        "Parsed" => "-> request parsed",
        "HandedToWorker" => "-> handed to a worker",
        "BackendSubmit" => "-> submitted to the backend",
        "NetworkSent" => "-> request written to the server's socket",
        "NetworkReply" => "network round trip and the server's work",
        "BackendComplete" => "backend I/O (host kernel, disk; over NBD: the reply taken in)",
        "UsedPublished" => "-> used element published",
        "IrqInjected" => "-> interrupt injected",
        "GuestComplete" => "-> guest sees the completion",
        "total" => "guest submission -> completion seen",
        _ => "",
    }
}

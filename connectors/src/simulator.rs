//! `simulator` source: a deterministic fleet of industrial devices.
//!
//! Devices sit on lines, lines in plants. Every device reads temperature, vibration,
//! pressure and current at `rate_hz`, with a daily drift (a sinusoid over 24 h of event
//! time) and Gaussian-like noise, and now and then suffers a fault episode. The `fault`
//! column carries the ground truth, so detectors downstream can be scored.
//!
//! Everything is a function of `seed`: each device has its own random generator seeded
//! from `(seed, device index)`, and devices are split across workers by index, so the rows
//! are the same whatever the number of workers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, SchemaRef};
use isthmus_engine::batch::{Batch, BatchStream, Time, schema_with_time};
use isthmus_engine::units::DurationSpec;
use isthmus_engine::{BuildContext, CheckContext, EngineError, Outputs, Problem, Source};
use schemars::JsonSchema;
use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[sources.plant_floor]
type = "simulator"
devices = 20
plants = 2
lines_per_plant = 2
seed = 7
rate_hz = 2.0
duration = "10m"
start = "2026-01-01T00:00:00Z"
batch_rows = 1024
faults = true
mean_time_between_faults = "30m"
"#;

/// Fault kinds, as written in the `fault` column.
pub const FAULT_KINDS: [&str; 5] = [
    "bearing_wear",
    "overheating",
    "stuck_sensor",
    "spike",
    "dropout",
];

/// Rows produced per activation at most, so that downstream operators get to run.
const ROWS_PER_ACTIVATION: usize = 1 << 16;

/// Simulates a fleet of devices that read temperature, vibration, pressure and current,
/// with daily drift, noise and injected faults labelled in a ground-truth `fault` column.
///
/// Output columns: `ts`, `device` (for example `p1-l2-d0007`), `plant` (`p1`), `line`
/// (`p1-l2`, unique across plants), `temperature` (°C), `vibration` (mm/s), `pressure`
/// (bar), `current` (A) and `fault` (`none`, `bearing_wear`, `overheating`,
/// `stuck_sensor` or `spike`; a `dropout` shows as missing rows). The rows are a function
/// of `seed` only, whatever the number of workers.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSource {
    /// Number of devices in the fleet, 1 to 1,000,000. Default 100.
    #[serde(default = "default_devices")]
    pub devices: usize,
    /// Number of plants; devices are spread evenly over all lines. Default 2.
    #[serde(default = "default_plants")]
    pub plants: usize,
    /// Production lines per plant. Default 3.
    #[serde(default = "default_lines_per_plant")]
    pub lines_per_plant: usize,
    /// Seed of the random generators: the same seed gives the same rows. Default 42.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Readings per second of each device, at most 1000. Default 1.0.
    #[serde(default = "default_rate_hz")]
    pub rate_hz: f64,
    /// How much event time to simulate, for example `"1h"`. Default `"1h"`.
    #[serde(default = "default_duration")]
    pub duration: DurationSpec,
    /// Event time of the first reading, RFC 3339. Default `"2026-01-01T00:00:00Z"`.
    #[serde(default = "default_start")]
    pub start: String,
    /// Pace by the wall clock: event-time seconds per wall-clock second (1.0 = real time,
    /// 60.0 = one minute per second). Absent (default): as fast as possible.
    #[serde(default)]
    pub realtime_speed: Option<f64>,
    /// Rows per batch at most. Default 1024.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Whether to inject faults. Default true.
    #[serde(default = "default_faults")]
    pub faults: bool,
    /// Mean event time between two fault episodes of one device, for example `"2h"`.
    /// Default `"2h"`.
    #[serde(default = "default_mtbf")]
    pub mean_time_between_faults: DurationSpec,
}

fn default_devices() -> usize {
    100
}
fn default_plants() -> usize {
    2
}
fn default_lines_per_plant() -> usize {
    3
}
fn default_seed() -> u64 {
    42
}
fn default_rate_hz() -> f64 {
    1.0
}
fn default_duration() -> DurationSpec {
    DurationSpec(Duration::from_secs(3600))
}
fn default_start() -> String {
    "2026-01-01T00:00:00Z".to_string()
}
fn default_batch_rows() -> usize {
    1024
}
fn default_faults() -> bool {
    true
}
fn default_mtbf() -> DurationSpec {
    DurationSpec(Duration::from_secs(7200))
}

impl Default for SimulatorSource {
    fn default() -> Self {
        SimulatorSource {
            devices: default_devices(),
            plants: default_plants(),
            lines_per_plant: default_lines_per_plant(),
            seed: default_seed(),
            rate_hz: default_rate_hz(),
            duration: default_duration(),
            start: default_start(),
            realtime_speed: None,
            batch_rows: default_batch_rows(),
            faults: default_faults(),
            mean_time_between_faults: default_mtbf(),
        }
    }
}

/// The schema of the simulator's output.
pub fn simulator_schema() -> SchemaRef {
    schema_with_time([
        Field::new("device", DataType::Utf8, false),
        Field::new("plant", DataType::Utf8, false),
        Field::new("line", DataType::Utf8, false),
        Field::new("temperature", DataType::Float64, false),
        Field::new("vibration", DataType::Float64, false),
        Field::new("pressure", DataType::Float64, false),
        Field::new("current", DataType::Float64, false),
        Field::new("fault", DataType::Utf8, false),
    ])
}

/// The checked configuration.
#[derive(Clone, Debug)]
struct Params {
    devices: usize,
    plants: usize,
    lines_per_plant: usize,
    seed: u64,
    start_ms: Time,
    /// Milliseconds between two readings of a device.
    period_ms: f64,
    /// Readings per device.
    ticks: u64,
    batch_rows: usize,
    /// Mean ticks between fault episodes, or `None` without faults.
    mtbf_ticks: Option<f64>,
    rate_hz: f64,
    realtime_speed: Option<f64>,
}

/// The largest fleet one simulator source simulates (each device keeps its own state).
pub const MAX_DEVICES: usize = 1_000_000;

impl SimulatorSource {
    fn params(&self) -> Result<Params, Problem> {
        if self.devices == 0 {
            return Err(
                Problem::at("devices", "the fleet needs at least one device")
                    .with_help("set `devices = 1` or more"),
            );
        }
        if self.devices > MAX_DEVICES {
            return Err(Problem::at(
                "devices",
                format!(
                    "{} devices is more than the simulator's {MAX_DEVICES}",
                    self.devices
                ),
            )
            .with_help("run several simulators, or several edge nodes, for a larger fleet"));
        }
        if self.plants == 0 {
            return Err(Problem::at("plants", "there must be at least one plant"));
        }
        if self.lines_per_plant == 0 {
            return Err(Problem::at(
                "lines_per_plant",
                "each plant needs at least one line",
            ));
        }
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0) {
            return Err(Problem::at(
                "rate_hz",
                format!(
                    "rate must be a positive number of readings per second, found {}",
                    self.rate_hz
                ),
            )
            .with_help("for example `rate_hz = 1.0`"));
        }
        if self.rate_hz > 1000.0 {
            return Err(Problem::at(
                "rate_hz",
                format!(
                    "rate {} Hz is above 1000 Hz: event time has millisecond resolution",
                    self.rate_hz
                ),
            )
            .with_help("use more `devices` for more rows per second"));
        }
        if self.duration.as_millis() == 0 {
            return Err(Problem::at("duration", "duration must be positive")
                .with_help("for example `duration = \"1h\"`"));
        }
        let start = chrono::DateTime::parse_from_rfc3339(self.start.trim()).map_err(|e| {
            Problem::at(
                "start",
                format!("`{}` is not an RFC 3339 timestamp: {e}", self.start),
            )
            .with_help("for example `start = \"2026-01-01T00:00:00Z\"`")
        })?;
        let start_ms = start.timestamp_millis();
        if start_ms < 0 {
            return Err(Problem::at(
                "start",
                "start must not be before 1970-01-01T00:00:00Z",
            ));
        }
        if let Some(speed) = self.realtime_speed
            && !(speed.is_finite() && speed > 0.0)
        {
            return Err(Problem::at(
                "realtime_speed",
                format!("speed must be a positive number, found {speed}"),
            )
            .with_help("1.0 is real time; remove the key to run as fast as possible"));
        }
        if self.batch_rows == 0 {
            return Err(Problem::at("batch_rows", "a batch needs at least one row")
                .with_help("the default is 1024"));
        }
        let mtbf_ms = self.mean_time_between_faults.as_millis();
        if self.faults && mtbf_ms == 0 {
            return Err(Problem::at(
                "mean_time_between_faults",
                "the mean time between faults must be positive",
            )
            .with_help("for example `\"2h\"`, or `faults = false`"));
        }
        let ticks =
            (self.duration.as_millis() as f64 * self.rate_hz / 1000.0 + 1e-9).floor() as u64;
        Ok(Params {
            devices: self.devices,
            plants: self.plants,
            lines_per_plant: self.lines_per_plant,
            seed: self.seed,
            start_ms: start_ms as Time,
            period_ms: 1000.0 / self.rate_hz,
            ticks,
            batch_rows: self.batch_rows,
            mtbf_ticks: self
                .faults
                .then(|| (mtbf_ms as f64 * self.rate_hz / 1000.0).max(1.0)),
            rate_hz: self.rate_hz,
            realtime_speed: self.realtime_speed,
        })
    }
}

/// SplitMix64: a tiny, fast, well-mixed generator (one state word per device).
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    #[inline]
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    #[inline]
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    #[inline]
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Roughly standard normal: the sum of four 16-bit uniforms (Irwin–Hall), rescaled.
    #[inline]
    fn gaussish(&mut self) -> f64 {
        let x = self.next_u64();
        let sum = (x & 0xFFFF) + ((x >> 16) & 0xFFFF) + ((x >> 32) & 0xFFFF) + (x >> 48);
        // Mean 2 * 65535.5 - 1, standard deviation 65536 * sqrt(4 / 12).
        (sum as f64 - 131_070.0) * (1.0 / (65_536.0 * 0.577_350_269_189_625_8))
    }

    /// Exponentially distributed with mean `mean`.
    fn exponential(&mut self, mean: f64) -> f64 {
        -(1.0 - self.uniform()).ln() * mean
    }
}

/// The generator of device `index` under `seed`.
fn device_rng(seed: u64, index: usize) -> SplitMix64 {
    let mut mix = SplitMix64(
        seed ^ (index as u64)
            .wrapping_add(1)
            .wrapping_mul(0xD134_2543_DE82_EF95),
    );
    // Decorrelate neighbouring devices and seeds before use.
    let state = mix.next_u64() ^ mix.next_u64().rotate_left(17);
    SplitMix64(state)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Fault {
    None,
    BearingWear,
    Overheating,
    StuckSensor,
    Spike,
    Dropout,
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::BearingWear => FAULT_KINDS[0],
            Fault::Overheating => FAULT_KINDS[1],
            Fault::StuckSensor => FAULT_KINDS[2],
            Fault::Spike => FAULT_KINDS[3],
            Fault::Dropout => FAULT_KINDS[4],
        }
    }
}

/// One simulated device and its state.
#[derive(Clone, Debug)]
struct Device {
    name: Text,
    plant: Text,
    line: Text,
    rng: SplitMix64,
    temp_base: f64,
    temp_amp: f64,
    vib_base: f64,
    vib_amp: f64,
    pres_base: f64,
    pres_amp: f64,
    cur_base: f64,
    cur_amp: f64,
    /// cos and sin of the device's phase in the daily cycle.
    phase_cos: f64,
    phase_sin: f64,
    last_temp: f64,
    fault: Fault,
    fault_start: u64,
    fault_ticks: u64,
    /// Vibration multiplier, temperature rise or pressure jump, depending on the fault.
    fault_magnitude: f64,
    /// The tick at which the device enters or leaves a fault episode.
    next_change: u64,
}

/// One reading of a device.
struct Reading {
    temperature: f64,
    vibration: f64,
    pressure: f64,
    current: f64,
    fault: Fault,
}

impl Device {
    fn new(p: &Params, index: usize) -> Self {
        let lines = p.plants * p.lines_per_plant;
        let line_index = index % lines;
        let plant_no = line_index / p.lines_per_plant + 1;
        let line_no = line_index % p.lines_per_plant + 1;
        let mut rng = device_rng(p.seed, index);
        // Plants follow their own shift pattern; devices vary a little around it.
        let phase = (plant_no as f64) * 0.9 + rng.range(-0.3, 0.3);
        let temp_base = rng.range(50.0, 70.0);
        let mut device = Device {
            name: Text::new(format!("p{plant_no}-l{line_no}-d{index:04}")),
            plant: Text::new(format!("p{plant_no}")),
            line: Text::new(format!("p{plant_no}-l{line_no}")),
            temp_base,
            temp_amp: rng.range(2.0, 5.0),
            vib_base: rng.range(1.5, 3.0),
            vib_amp: rng.range(0.1, 0.3),
            pres_base: rng.range(4.0, 7.0),
            pres_amp: rng.range(0.1, 0.3),
            cur_base: rng.range(8.0, 15.0),
            cur_amp: rng.range(0.5, 1.5),
            phase_cos: phase.cos(),
            phase_sin: phase.sin(),
            last_temp: temp_base,
            fault: Fault::None,
            fault_start: 0,
            fault_ticks: 1,
            fault_magnitude: 0.0,
            next_change: u64::MAX,
            rng,
        };
        if let Some(mean) = p.mtbf_ticks {
            device.next_change = device.rng.exponential(mean) as u64;
        }
        device
    }

    /// Enters or leaves a fault episode at `tick`.
    #[cold]
    fn transition(&mut self, tick: u64, p: &Params) {
        let Some(mean) = p.mtbf_ticks else {
            self.next_change = u64::MAX;
            return;
        };
        if self.fault != Fault::None {
            self.fault = Fault::None;
            self.next_change = tick + (self.rng.exponential(mean) as u64).max(1);
            return;
        }
        let ticks_for = |secs: f64| ((secs * p.rate_hz) as u64).max(1);
        let (fault, seconds, magnitude) = match self.rng.next_u64() % 5 {
            0 => (
                Fault::BearingWear,
                self.rng.range(600.0, 1800.0),
                self.rng.range(3.0, 5.0),
            ),
            1 => (
                Fault::Overheating,
                self.rng.range(300.0, 1200.0),
                self.rng.range(15.0, 25.0),
            ),
            2 => (Fault::StuckSensor, self.rng.range(120.0, 600.0), 0.0),
            3 => (Fault::Spike, 0.0, self.rng.range(20.0, 40.0)),
            _ => (Fault::Dropout, self.rng.range(60.0, 600.0), 0.0),
        };
        let ticks = if fault == Fault::Spike {
            1 + self.rng.next_u64() % 3
        } else {
            ticks_for(seconds)
        };
        self.fault = fault;
        self.fault_start = tick;
        self.fault_ticks = ticks;
        self.fault_magnitude = magnitude;
        self.next_change = tick + ticks;
    }

    /// The reading at `tick`, where the daily cycle is at angle `a` (given as sin, cos);
    /// `None` during a dropout.
    #[inline]
    fn read(&mut self, tick: u64, sin_a: f64, cos_a: f64, p: &Params) -> Option<Reading> {
        if tick >= self.next_change {
            self.transition(tick, p);
        }
        let daily = sin_a * self.phase_cos + cos_a * self.phase_sin;
        let mut temperature = self.temp_base + self.temp_amp * daily + 0.3 * self.rng.gaussish();
        let mut vibration =
            (self.vib_base + self.vib_amp * daily + 0.15 * self.rng.gaussish()).max(0.05);
        let mut pressure = self.pres_base + self.pres_amp * daily + 0.05 * self.rng.gaussish();
        let mut current = self.cur_base + self.cur_amp * daily + 0.2 * self.rng.gaussish();
        match self.fault {
            Fault::None => {}
            Fault::BearingWear => {
                let progress = (tick - self.fault_start + 1) as f64 / self.fault_ticks as f64;
                vibration *= 1.0 + (self.fault_magnitude - 1.0) * progress;
                current += 1.5 * progress;
            }
            Fault::Overheating => {
                let progress = (tick - self.fault_start + 1) as f64 / self.fault_ticks as f64;
                temperature += self.fault_magnitude * progress;
            }
            Fault::StuckSensor => temperature = self.last_temp,
            Fault::Spike => pressure += self.fault_magnitude,
            Fault::Dropout => return None,
        }
        self.last_temp = temperature;
        Some(Reading {
            temperature,
            vibration,
            pressure,
            current,
            fault: self.fault,
        })
    }
}

/// A short text kept padded to 16 bytes, so that appending it to a column is two word
/// moves rather than a `memcpy` call of variable length.
#[derive(Clone, Debug)]
struct Text {
    padded: [u8; 16],
    text: String,
}

impl Text {
    fn new(text: String) -> Self {
        let mut padded = [0u8; 16];
        if text.len() <= 16 {
            padded[..text.len()].copy_from_slice(text.as_bytes());
        }
        Text { padded, text }
    }

    fn from_static(text: &'static str) -> Self {
        Text::new(text.to_string())
    }
}

/// A Utf8 column under construction: cheaper than a `StringBuilder` (no null bitmap, short
/// texts copied as fixed-size blocks).
struct TextColumn {
    offsets: Vec<i32>,
    values: Vec<u8>,
}

impl TextColumn {
    fn with_capacity(rows: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        TextColumn {
            offsets,
            values: Vec::with_capacity(rows * 16 + 16),
        }
    }

    #[inline]
    fn push(&mut self, text: &Text) {
        let len = text.text.len();
        if len <= 16 {
            let start = self.values.len();
            self.values.extend_from_slice(&text.padded);
            self.values.truncate(start + len);
        } else {
            self.values.extend_from_slice(text.text.as_bytes());
        }
        self.offsets.push(self.values.len() as i32);
    }

    fn finish(self) -> ArrayRef {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        Arc::new(
            StringArray::try_new(offsets, Buffer::from_vec(self.values), None)
                .expect("simulator text is UTF-8"),
        )
    }
}

/// One reading of one device, as the simulator emits it in a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SensorReading {
    /// Temperature, °C.
    pub temperature: f64,
    /// Vibration, mm/s.
    pub vibration: f64,
    /// Pressure, bar.
    pub pressure: f64,
    /// Current, A.
    pub current: f64,
}

impl SimulatorSource {
    /// Calls `f(event_time_ms, device_index, reading)` for every reading this configuration
    /// generates, in the order one worker emits them, without Arrow or timely: the
    /// hand-written baseline of the benchmarks.
    pub fn for_each_reading(
        &self,
        mut f: impl FnMut(i64, usize, &SensorReading),
    ) -> Result<(), Problem> {
        let p = self.params()?;
        let mut devices: Vec<Device> = (0..p.devices).map(|i| Device::new(&p, i)).collect();
        const DAY_MS: f64 = 86_400_000.0;
        for tick in 0..p.ticks {
            let time = p.start_ms + (tick as f64 * p.period_ms) as Time;
            let angle = std::f64::consts::TAU * ((time % 86_400_000) as f64 / DAY_MS);
            let (sin_a, cos_a) = angle.sin_cos();
            for (i, d) in devices.iter_mut().enumerate() {
                if let Some(r) = d.read(tick, sin_a, cos_a, &p) {
                    let reading = SensorReading {
                        temperature: r.temperature,
                        vibration: r.vibration,
                        pressure: r.pressure,
                        current: r.current,
                    };
                    f(time as i64, i, &reading);
                }
            }
        }
        Ok(())
    }
}

/// Generates the rows of one worker's share of the fleet, tick by tick, in batches.
struct Generator {
    p: Params,
    schema: SchemaRef,
    devices: Vec<Device>,
    /// The next tick to generate.
    tick: u64,
    /// The next device (index into `devices`) within the tick.
    cursor: usize,
    /// The `fault` labels, by `Fault as usize`.
    labels: [Text; 6],
}

impl Generator {
    /// The share of worker `worker` of `workers`: devices whose index is `worker` modulo
    /// `workers`.
    fn new(p: &Params, worker: usize, workers: usize) -> Self {
        let devices = (0..p.devices)
            .filter(|i| i % workers.max(1) == worker)
            .map(|i| Device::new(p, i))
            .collect();
        let labels = [
            Fault::None,
            Fault::BearingWear,
            Fault::Overheating,
            Fault::StuckSensor,
            Fault::Spike,
            Fault::Dropout,
        ]
        .map(|f| Text::from_static(f.label()));
        Generator {
            p: p.clone(),
            schema: simulator_schema(),
            devices,
            tick: 0,
            cursor: 0,
            labels,
        }
    }

    fn tick_time(&self, tick: u64) -> Time {
        self.p.start_ms + (tick as f64 * self.p.period_ms) as Time
    }

    /// The event time of the next reading to generate, or `None` when done.
    fn next_time(&self) -> Option<Time> {
        (self.tick < self.p.ticks && !self.devices.is_empty()).then(|| self.tick_time(self.tick))
    }

    /// The next batch of at most `batch_rows` rows with event times up to `until`, with the
    /// time it may be sent at (at most the time of its first row). `None` when no row was
    /// generated (everything up to `until` done, or all devices dropped out).
    fn next_batch(&mut self, until: Time) -> Option<(Time, RecordBatch)> {
        let batch_time = self.next_time()?;
        let cap = self.p.batch_rows;
        let mut ts: Vec<i64> = Vec::with_capacity(cap);
        let mut device = TextColumn::with_capacity(cap);
        let mut plant = TextColumn::with_capacity(cap);
        let mut line = TextColumn::with_capacity(cap);
        let mut temperature: Vec<f64> = Vec::with_capacity(cap);
        let mut vibration: Vec<f64> = Vec::with_capacity(cap);
        let mut pressure: Vec<f64> = Vec::with_capacity(cap);
        let mut current: Vec<f64> = Vec::with_capacity(cap);
        let mut fault = TextColumn::with_capacity(cap);
        const DAY_MS: f64 = 86_400_000.0;
        while ts.len() < cap && self.tick < self.p.ticks {
            let time = self.tick_time(self.tick);
            if time > until {
                break;
            }
            let angle = std::f64::consts::TAU * ((time % 86_400_000) as f64 / DAY_MS);
            let (sin_a, cos_a) = angle.sin_cos();
            while self.cursor < self.devices.len() && ts.len() < cap {
                let d = &mut self.devices[self.cursor];
                self.cursor += 1;
                if let Some(r) = d.read(self.tick, sin_a, cos_a, &self.p) {
                    ts.push(time as i64);
                    device.push(&d.name);
                    plant.push(&d.plant);
                    line.push(&d.line);
                    temperature.push(r.temperature);
                    vibration.push(r.vibration);
                    pressure.push(r.pressure);
                    current.push(r.current);
                    fault.push(&self.labels[r.fault as usize]);
                }
            }
            if self.cursor == self.devices.len() {
                self.cursor = 0;
                self.tick += 1;
            }
        }
        if ts.is_empty() {
            return None;
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from(ts)),
            device.finish(),
            plant.finish(),
            line.finish(),
            Arc::new(Float64Array::from(temperature)),
            Arc::new(Float64Array::from(vibration)),
            Arc::new(Float64Array::from(pressure)),
            Arc::new(Float64Array::from(current)),
            fault.finish(),
        ];
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .expect("simulator columns match its schema");
        Some((batch_time, batch))
    }
}

impl Source for SimulatorSource {
    fn schemas(&self, _cx: &CheckContext<'_>) -> Result<Outputs<SchemaRef>, Problem> {
        self.params()?;
        Ok(Outputs::main(simulator_schema()))
    }

    fn build<'s>(&self, cx: &BuildContext<'s>) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        let p = self.params().map_err(|e| cx.error(e.message))?;
        let mut generator = Generator::new(&p, cx.worker_index(), cx.workers());
        let shutdown = cx.shutdown.clone();
        let scope = cx.scope;
        let stream = source::<_, CapacityContainerBuilder<Vec<Batch>>, _, _>(
            cx.scope,
            &cx.name,
            move |cap, info| {
                let activator = scope.activator_for(info.address);
                let mut cap = generator.next_time().map(|t| {
                    let mut cap = cap;
                    cap.downgrade(&t);
                    cap
                });
                let mut wall_start: Option<Instant> = None;
                move |output| {
                    let Some(c) = cap.as_mut() else { return };
                    if shutdown.load(Ordering::Relaxed) {
                        cap = None;
                        return;
                    }
                    let started = *wall_start.get_or_insert_with(Instant::now);
                    let until = match p.realtime_speed {
                        None => Time::MAX,
                        Some(speed) => {
                            p.start_ms + (started.elapsed().as_secs_f64() * 1000.0 * speed) as Time
                        }
                    };
                    let mut produced = 0;
                    loop {
                        let Some(next) = generator.next_time() else {
                            cap = None;
                            return;
                        };
                        if next > *c.time() {
                            c.downgrade(&next);
                        }
                        if next > until {
                            let speed = p.realtime_speed.unwrap_or(1.0);
                            let due = Duration::from_secs_f64(
                                (next - p.start_ms) as f64 / 1000.0 / speed,
                            );
                            let delay = due
                                .saturating_sub(started.elapsed())
                                .max(Duration::from_millis(1));
                            activator.activate_after(delay);
                            return;
                        }
                        if produced >= ROWS_PER_ACTIVATION {
                            activator.activate();
                            return;
                        }
                        if let Some((time, batch)) = generator.next_batch(until) {
                            if time > *c.time() {
                                c.downgrade(&time);
                            }
                            produced += batch.num_rows();
                            output.session(&*c).give(Batch::new(batch));
                        }
                    }
                }
            },
        );
        Ok(Outputs::main(stream))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, TimestampMillisecondType};
    use isthmus_engine::testing::Harness;

    use super::*;

    fn sim(devices: usize, duration: &str) -> SimulatorSource {
        SimulatorSource {
            devices,
            duration: DurationSpec::parse(duration).unwrap(),
            ..SimulatorSource::default()
        }
    }

    /// Every row as comparable text (floats by their bits).
    fn rows(batches: &[RecordBatch]) -> Vec<String> {
        let mut out = Vec::new();
        for b in batches {
            let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
            let device = b.column(1).as_string::<i32>();
            let fault = b.column(8).as_string::<i32>();
            for i in 0..b.num_rows() {
                let floats: Vec<String> = (4..8)
                    .map(|c| {
                        b.column(c)
                            .as_primitive::<Float64Type>()
                            .value(i)
                            .to_bits()
                            .to_string()
                    })
                    .collect();
                out.push(format!(
                    "{} {} {} {}",
                    ts.value(i),
                    device.value(i),
                    fault.value(i),
                    floats.join(" ")
                ));
            }
        }
        out
    }

    fn generate(s: &SimulatorSource, worker: usize, workers: usize) -> Vec<(Time, RecordBatch)> {
        let mut g = Generator::new(&s.params().unwrap(), worker, workers);
        let mut out = Vec::new();
        while g.next_time().is_some() {
            if let Some(b) = g.next_batch(Time::MAX) {
                out.push(b);
            }
        }
        out
    }

    fn concat(batches: &[(Time, RecordBatch)]) -> RecordBatch {
        let v: Vec<RecordBatch> = batches.iter().map(|(_, b)| b.clone()).collect();
        arrow::compute::concat_batches(&simulator_schema(), &v).unwrap()
    }

    #[test]
    fn schema_names_and_values() {
        let s = SimulatorSource {
            faults: false,
            plants: 2,
            lines_per_plant: 3,
            ..sim(12, "1m")
        };
        let out = Harness::default().run_source(&s);
        assert_eq!(out.main_rows(), 12 * 60);
        let b = out.main_batch().unwrap();
        assert_eq!(b.schema(), simulator_schema());
        let schema = b.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "ts",
                "device",
                "plant",
                "line",
                "temperature",
                "vibration",
                "pressure",
                "current",
                "fault"
            ]
        );
        let device = b.column(1).as_string::<i32>();
        let plant = b.column(2).as_string::<i32>();
        let line = b.column(3).as_string::<i32>();
        assert_eq!(device.value(0), "p1-l1-d0000");
        assert_eq!(device.value(7), "p1-l2-d0007");
        assert_eq!(plant.value(7), "p1");
        assert_eq!(line.value(7), "p1-l2");
        assert_eq!(device.value(4), "p2-l2-d0004");
        let lines: BTreeSet<&str> = (0..b.num_rows()).map(|i| line.value(i)).collect();
        assert_eq!(lines.len(), 6);
        let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.value(0), 1_767_225_600_000); // 2026-01-01T00:00:00Z
        assert_eq!(ts.value(b.num_rows() - 1), 1_767_225_600_000 + 59_000);
        for (c, lo, hi) in [
            (4, 40.0, 85.0),
            (5, 0.0, 5.0),
            (6, 3.0, 8.0),
            (7, 5.0, 17.0),
        ] {
            let col = b.column(c).as_primitive::<Float64Type>();
            assert!(
                col.values().iter().all(|v| (lo..hi).contains(v)),
                "column {c} out of [{lo}, {hi})"
            );
        }
        assert!((0..b.num_rows()).all(|i| b.column(8).as_string::<i32>().value(i) == "none"));
        // Batches are sent at a time no later than their rows, in event-time order.
        let mut last = 0;
        for (t, batch) in &out.main {
            let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
            assert!(*t <= ts.values().iter().copied().min().unwrap() as u64);
            assert!(*t >= last);
            last = *t;
        }
    }

    #[test]
    fn same_seed_same_rows_other_seed_other_rows() {
        let s = sim(10, "20m");
        let a = rows(&[Harness::default().run_source(&s).main_batch().unwrap()]);
        let b = rows(&[Harness::default().run_source(&s).main_batch().unwrap()]);
        assert_eq!(a, b);
        let c = rows(&[Harness::default()
            .run_source(&SimulatorSource { seed: 43, ..s })
            .main_batch()
            .unwrap()]);
        assert_ne!(a, c);
    }

    #[test]
    fn one_and_two_workers_give_the_same_rows() {
        let s = SimulatorSource {
            mean_time_between_faults: DurationSpec::parse("10m").unwrap(),
            batch_rows: 100,
            ..sim(25, "30m")
        };
        let mut one = rows(
            &generate(&s, 0, 1)
                .into_iter()
                .map(|(_, b)| b)
                .collect::<Vec<_>>(),
        );
        let mut two: Vec<String> = (0..2)
            .flat_map(|w| {
                rows(
                    &generate(&s, w, 2)
                        .into_iter()
                        .map(|(_, b)| b)
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert!(one.len() > 25 * 1000);
        one.sort();
        two.sort();
        assert_eq!(one, two);
    }

    /// Runs the source operator on `workers` timely workers; returns every batch.
    fn run_on_workers(s: &SimulatorSource, workers: usize) -> Vec<RecordBatch> {
        use std::sync::Mutex;
        use std::sync::atomic::AtomicBool;

        use isthmus_engine::Kind;
        use isthmus_engine::channel::ChannelHub;
        use isthmus_engine::policy::PolicyStore;
        use isthmus_engine::spec::{NodeSpec, Role};
        use isthmus_engine::telemetry::ComponentMetrics;
        use timely::dataflow::operators::Inspect;

        let out: Arc<Mutex<Vec<RecordBatch>>> = Default::default();
        let (s, o) = (s.clone(), out.clone());
        timely::execute(timely::Config::process(workers), move |worker| {
            let o = o.clone();
            worker.dataflow::<Time, _, _>(|scope| {
                let cx = BuildContext {
                    scope,
                    name: "sim".into(),
                    node: Arc::new(NodeSpec {
                        id: "t".into(),
                        role: Role::Standalone,
                    }),
                    policy: Arc::new(PolicyStore::new(Default::default(), Default::default())),
                    metrics: Arc::new(ComponentMetrics::new(
                        "sim",
                        Kind::Source,
                        "simulator",
                        false,
                    )),
                    channels: Arc::new(ChannelHub::new()),
                    shutdown: Arc::new(AtomicBool::new(false)),
                    input_schema: None,
                    base_dir: ".".into(),
                    delivery: Arc::new(isthmus_engine::delivery::DeliveryTracker::new(0)),
                };
                s.build(&cx)
                    .unwrap()
                    .main
                    .inspect(move |b: &Batch| o.lock().unwrap().push(b.data.clone()));
            });
        })
        .unwrap();
        Arc::try_unwrap(out).unwrap().into_inner().unwrap()
    }

    #[test]
    fn timely_workers_split_the_fleet() {
        let s = SimulatorSource {
            mean_time_between_faults: DurationSpec::parse("5m").unwrap(),
            batch_rows: 64,
            ..sim(9, "20m")
        };
        let mut one = rows(&run_on_workers(&s, 1));
        let mut two = rows(&run_on_workers(&s, 2));
        assert!(one.len() > 9 * 1000);
        one.sort();
        two.sort();
        assert_eq!(one, two);
    }

    #[test]
    fn faults_are_labelled_and_shape_the_readings() {
        let s = SimulatorSource {
            mean_time_between_faults: DurationSpec::parse("20m").unwrap(),
            ..sim(40, "3h")
        };
        let b = concat(&generate(&s, 0, 1));
        let fault = b.column(8).as_string::<i32>();
        let device = b.column(1).as_string::<i32>();
        let temp = b.column(4).as_primitive::<Float64Type>();
        let vib = b.column(5).as_primitive::<Float64Type>();
        let pres = b.column(6).as_primitive::<Float64Type>();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for i in 0..b.num_rows() {
            *seen.entry(fault.value(i)).or_default() += 1;
        }
        for kind in [
            "none",
            "bearing_wear",
            "overheating",
            "stuck_sensor",
            "spike",
        ] {
            assert!(
                seen.get(kind).copied().unwrap_or(0) > 0,
                "no `{kind}` rows: {seen:?}"
            );
        }
        assert!(!seen.contains_key("dropout"), "dropouts send no rows");
        // Spikes are huge pressure readings; normal pressure stays below 8 bar.
        for i in 0..b.num_rows() {
            match fault.value(i) {
                "spike" => assert!(pres.value(i) > 20.0),
                _ => assert!(pres.value(i) < 8.0),
            }
        }
        // Bearing wear ends at 3–5× the normal vibration; overheating at +15..25 °C.
        let max_of = |kind: &str, col: &arrow::array::Float64Array| {
            (0..b.num_rows())
                .filter(|&i| fault.value(i) == kind)
                .map(|i| col.value(i))
                .fold(f64::MIN, f64::max)
        };
        assert!(max_of("bearing_wear", vib) > 6.0);
        assert!(max_of("overheating", temp) > 80.0);
        // A stuck sensor repeats its temperature exactly.
        let mut last: BTreeMap<&str, f64> = BTreeMap::new();
        let mut repeats = 0;
        for i in 0..b.num_rows() {
            let d = device.value(i);
            if fault.value(i) == "stuck_sensor" && last.get(d) == Some(&temp.value(i)) {
                repeats += 1;
            }
            last.insert(d, temp.value(i));
        }
        assert!(repeats > 100);
    }

    #[test]
    fn dropouts_leave_gaps_and_row_count_matches_rate() {
        let s = SimulatorSource {
            mean_time_between_faults: DurationSpec::parse("15m").unwrap(),
            rate_hz: 2.0,
            ..sim(30, "2h")
        };
        let b = concat(&generate(&s, 0, 1));
        let expected = 30 * 2 * 7200;
        assert!(b.num_rows() < expected, "dropouts remove rows");
        assert!(
            b.num_rows() as f64 > 0.9 * expected as f64,
            "{} rows",
            b.num_rows()
        );
        let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
        let device = b.column(1).as_string::<i32>();
        let mut last: BTreeMap<&str, i64> = BTreeMap::new();
        let mut max_gap = 0;
        for i in 0..b.num_rows() {
            if let Some(prev) = last.insert(device.value(i), ts.value(i)) {
                max_gap = max_gap.max(ts.value(i) - prev);
            }
        }
        assert!(
            max_gap >= 60_000,
            "a dropout lasts at least a minute, max gap {max_gap} ms"
        );

        let clean = SimulatorSource { faults: false, ..s };
        let b = concat(&generate(&clean, 0, 1));
        assert_eq!(b.num_rows(), expected);
        let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.value(b.num_rows() - 1) - ts.value(0), 7_200_000 - 500);
    }

    #[test]
    fn realtime_pacing_follows_the_wall_clock() {
        let s = SimulatorSource {
            realtime_speed: Some(100.0),
            faults: false,
            ..sim(3, "20s")
        };
        let started = Instant::now();
        let out = Harness::default().run_source(&s);
        let elapsed = started.elapsed();
        assert_eq!(out.main_rows(), 60);
        // 20 s of event time at 100× take about 0.2 s.
        assert!(elapsed >= Duration::from_millis(180), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert!(
            out.main.len() > 5,
            "rows come in several batches as time passes"
        );
    }

    #[test]
    fn check_reports_bad_config() {
        let bad = [
            (
                SimulatorSource {
                    devices: 0,
                    ..Default::default()
                },
                "devices",
            ),
            (
                SimulatorSource {
                    rate_hz: 0.0,
                    ..Default::default()
                },
                "rate_hz",
            ),
            (
                SimulatorSource {
                    rate_hz: f64::NAN,
                    ..Default::default()
                },
                "rate_hz",
            ),
            (
                SimulatorSource {
                    start: "yesterday".into(),
                    ..Default::default()
                },
                "start",
            ),
            (
                SimulatorSource {
                    realtime_speed: Some(-1.0),
                    ..Default::default()
                },
                "realtime_speed",
            ),
            (
                SimulatorSource {
                    batch_rows: 0,
                    ..Default::default()
                },
                "batch_rows",
            ),
            (
                SimulatorSource {
                    plants: 0,
                    ..Default::default()
                },
                "plants",
            ),
        ];
        for (s, key) in bad {
            assert_eq!(s.params().unwrap_err().key.as_deref(), Some(key));
        }
        assert!(SimulatorSource::default().params().is_ok());
    }

    #[test]
    fn example_parses() {
        let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let mut body = table["sources"]["plant_floor"].as_table().unwrap().clone();
        body.remove("type");
        let s: SimulatorSource = body.try_into().unwrap();
        assert_eq!(s.devices, 20);
        assert!(s.params().is_ok());
    }
}

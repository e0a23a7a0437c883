//! The wgpu side of the GPU backend: the device, the compiled kernels, a pool of buffers, and one
//! command encoder into which every kernel launch is recorded until the host needs a result.
//!
//! Why one file of over 600 lines: the device, the kernel cache, the buffer pools, the bind
//! groups and the recording encoder are the fields of one `Context`, and each method touches
//! several of them; split, each piece would reach into the others' fields.

use anyhow::{anyhow, bail, Context as _, Result};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A kernel: its name, its entry point, and values of its override constants.
type Kernel = (&'static str, &'static str, &'static [(&'static str, f64)]);

/// Kernels that set override constants; every other entry point is a kernel of its own name.
const VARIANTS: &[Kernel] = &[
    ("gemm", "gemm", &[("VEC4_B", 0.0)]),
    ("gemm_vec4b", "gemm", &[("VEC4_B", 1.0)]),
];

/// The shader files (one per kernel family; `pool_window.wgsl`, the geometry of pooling windows,
/// prepended to the two that pool) and their entry points.
const SHADERS: &[(&str, &str, &[&str])] = &[
    (
        "elementwise",
        include_str!("../../../shaders/elementwise.wgsl"),
        &[
            "add",
            "copy",
            "relu_forward",
            "relu_backward",
            "dropout",
            "add_channel_bias",
            "ema",
            "scale",
        ],
    ),
    (
        "gemm",
        include_str!("../../../shaders/gemm.wgsl"),
        &["gemm", "gemm_tiled"],
    ),
    (
        "conv",
        include_str!("../../../shaders/conv.wgsl"),
        &["im2col", "col2im"],
    ),
    (
        "reduce",
        include_str!("../../../shaders/reduce.wgsl"),
        &["channel_sum", "sum_leading", "sum_squares"],
    ),
    (
        "batchnorm",
        concat!(
            include_str!("../../../shaders/pool_window.wgsl"),
            include_str!("../../../shaders/batchnorm.wgsl")
        ),
        &[
            "stats_sum",
            "stats_var",
            "normalize",
            "normalize_pool",
            "backward_reduce",
            "backward_dx",
        ],
    ),
    (
        "pool",
        concat!(
            include_str!("../../../shaders/pool_window.wgsl"),
            include_str!("../../../shaders/pool.wgsl")
        ),
        &[
            "forward",
            "backward",
            "global_avg_forward",
            "global_avg_backward",
        ],
    ),
    (
        "upsample",
        include_str!("../../../shaders/upsample.wgsl"),
        &["forward", "backward"],
    ),
    (
        "depthwise",
        include_str!("../../../shaders/depthwise.wgsl"),
        &["forward", "backward_input", "backward_weight"],
    ),
    (
        "loss",
        include_str!("../../../shaders/loss.wgsl"),
        &["bce_with_logits"],
    ),
    (
        "optim",
        include_str!("../../../shaders/optim.wgsl"),
        &["adam", "sgd"],
    ),
];

/// Launches recorded before the encoder is submitted on its own: the slots of the uniform ring.
const MAX_PENDING: usize = 512;
/// Bytes of one launch's parameter block as bound (every kernel's `Params` struct fits).
const PARAMS_BYTES: u64 = 128;
/// Bind groups kept before the cache is emptied (a training step needs a few hundred; other batch
/// sizes, as in validation, add theirs).
const MAX_BIND_GROUPS: usize = 16_384;
/// Invocations per workgroup of the 1-D kernels.
pub const WORKGROUP: u32 = 256;

pub struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pipelines: HashMap<String, wgpu::ComputePipeline>,
    /// Free buffers by size in bytes: a training step's tensors have the same sizes every step,
    /// so after the first step every tensor comes from here. The lowest-ordered free buffer is
    /// taken first, so that a step that frees and takes the same sizes in the same order as the
    /// previous one also gets the same buffers, and finds its bind groups in the cache.
    pool: Mutex<HashMap<u64, BTreeSet<wgpu::Buffer>>>,
    /// Free read-back buffers by size, likewise.
    readback: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// One slot of `slot` bytes per launch of a submission; each launch's parameters are written
    /// to the host copy in `Recording` and uploaded once, when the submission is made.
    uniforms: wgpu::Buffer,
    slot: u64,
    recording: Mutex<Recording>,
    /// Bind groups by (kernel, uniform slot, storage bindings): a step repeats the previous
    /// step's launches on the same pooled buffers, so it finds every bind group here.
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
    created_buffers: AtomicUsize,
    created_bind_groups: AtomicUsize,
    /// The first error the device reported outside an error scope (out of memory, device lost).
    fault: Arc<Mutex<Option<String>>>,
    /// Times the host has waited for the device.
    syncs: AtomicUsize,
    /// Fault injection for tests: the device "fails" at this wait (FRACTURE_GPU_FAULT_AT_SYNC).
    fail_at_sync: Option<usize>,
    /// Kernel timing with timestamp queries, once [`Context::start_profiling`] has been called.
    profiler: Mutex<Option<Profiler>>,
}

/// GPU time per kernel, from timestamps the device writes at the start and end of each launch's
/// compute pass. Reading them back makes every submission wait, so it is on only when asked.
struct Profiler {
    queries: wgpu::QuerySet,
    /// The resolved timestamps (QUERY_RESOLVE), and their host-readable copy.
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
    totals: HashMap<String, KernelTime>,
}

/// The GPU time of one kernel, summed over its launches.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KernelTime {
    /// "file::entry", e.g. "gemm::gemm_tiled".
    pub kernel: String,
    pub launches: usize,
    pub ms: f64,
}

/// The panic payload of a GPU that failed while a model ran on it (device lost, out of memory).
/// The `Backend` trait's ops cannot fail, so such a fault unwinds to the command, which reports it
/// and, under `--backend auto`, continues on the CPU from the last checkpoint.
#[derive(Debug, Clone)]
pub struct GpuFault(pub String);

type BindKey = (wgpu::ComputePipeline, u32, Vec<(u32, wgpu::Buffer)>);

/// The launches and copies recorded since the last submission.
#[derive(Default)]
struct Recording {
    encoder: Option<wgpu::CommandEncoder>,
    /// Parameter blocks of the launches, one slot each.
    params: Vec<u8>,
    launches: usize,
    /// The kernel of each launch, while profiling.
    kernels: Vec<String>,
}

/// How many GPU objects the backend has created so far (for checking that a training step, once
/// warmed up, creates none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Created {
    pub buffers: usize,
    pub bind_groups: usize,
}

/// One storage buffer bound to a kernel: (binding number, buffer).
pub type Binding<'a> = (u32, &'a wgpu::Buffer);

impl Context {
    /// Opens the first adapter wgpu offers (a real GPU before a software one) and compiles every
    /// kernel, so that a shader error shows at start-up and not in the middle of training.
    pub fn new() -> Result<Arc<Context>> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| anyhow!("no GPU adapter found ({e}); on Linux without a GPU, install Mesa's lavapipe: apt-get install mesa-vulkan-drivers"))?;
        Self::with_adapter(adapter)
    }

    pub fn with_adapter(adapter: wgpu::Adapter) -> Result<Arc<Context>> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("fracture-cnn"),
            required_limits: limits.clone(),
            required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
            ..Default::default()
        }))
        .with_context(|| format!("cannot open the GPU device {}", info.name))?;
        let mut pipelines = HashMap::new();
        for (file, source, entries) in SHADERS {
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(file),
                source: wgpu::ShaderSource::Wgsl((*source).into()),
            });
            let kernels: Vec<Kernel> = entries
                .iter()
                .flat_map(|&e| {
                    let variants: Vec<Kernel> =
                        VARIANTS.iter().filter(|v| v.1 == e).copied().collect();
                    if variants.is_empty() {
                        vec![(e, e, &[][..])]
                    } else {
                        variants
                    }
                })
                .collect();
            for (name, entry, constants) in kernels {
                let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(name),
                    layout: None,
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        ..Default::default()
                    },
                    cache: None,
                });
                pipelines.insert(format!("{file}::{name}"), pipeline);
            }
            if let Some(e) = pollster::block_on(scope.pop()) {
                bail!("shaders/{file}.wgsl does not compile on {}: {e}", info.name);
            }
        }
        let fault: Arc<Mutex<Option<String>>> = Arc::default();
        let record = |fault: &Arc<Mutex<Option<String>>>, what: String| {
            fault.lock().expect("fault").get_or_insert(what);
        };
        let on_error = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let what = match e {
                wgpu::Error::OutOfMemory { .. } => "the GPU ran out of memory".to_string(),
                e => format!("the GPU reported an error: {e}"),
            };
            record(&on_error, what);
        }));
        let on_lost = fault.clone();
        device.set_device_lost_callback(move |reason, message| {
            record(
                &on_lost,
                format!("the GPU device was lost ({reason:?}): {message}"),
            );
        });
        let fail_at_sync = std::env::var("FRACTURE_GPU_FAULT_AT_SYNC")
            .ok()
            .and_then(|v| v.parse().ok());
        let slot = PARAMS_BYTES.next_multiple_of(limits.min_uniform_buffer_offset_alignment as u64);
        let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("launch parameters"),
            size: slot * MAX_PENDING as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Arc::new(Context {
            device,
            queue,
            info,
            limits,
            pipelines,
            pool: Mutex::default(),
            readback: Mutex::default(),
            uniforms,
            slot,
            recording: Mutex::default(),
            bind_groups: Mutex::default(),
            created_buffers: AtomicUsize::new(0),
            created_bind_groups: AtomicUsize::new(0),
            fault,
            syncs: AtomicUsize::new(0),
            fail_at_sync,
            profiler: Mutex::default(),
        }))
    }

    /// The largest buffer, in f32 values.
    pub fn max_buffer_floats(&self) -> usize {
        self.limits.max_buffer_size as usize / 4
    }

    /// The largest tensor one binding can hold, in f32 values.
    pub fn max_binding_floats(&self) -> usize {
        (self.limits.max_storage_buffer_binding_size as usize)
            .min(self.limits.max_buffer_size as usize)
            / 4
    }

    /// A buffer of at least `bytes` from the pool, or a new one. Sizes are rounded up to 16 bytes
    /// so that any buffer can also be bound as an array of vec4.
    pub fn take_buffer(&self, bytes: u64) -> wgpu::Buffer {
        let bytes = bytes.max(16).next_multiple_of(16);
        if let Some(b) = self
            .pool
            .lock()
            .expect("pool")
            .get_mut(&bytes)
            .and_then(BTreeSet::pop_first)
        {
            return b;
        }
        self.created_buffers.fetch_add(1, Ordering::Relaxed);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Returns a buffer to the pool. Commands already recorded that use it run before any later
    /// command that reuses it, because both go through the same queue in order.
    pub fn give_back(&self, buf: wgpu::Buffer) {
        self.pool
            .lock()
            .expect("pool")
            .entry(buf.size())
            .or_default()
            .insert(buf);
    }

    /// GPU objects created so far.
    pub fn created(&self) -> Created {
        Created {
            buffers: self.created_buffers.load(Ordering::Relaxed),
            bind_groups: self.created_bind_groups.load(Ordering::Relaxed),
        }
    }

    /// Records one kernel launch: `kernel` is "file::entry", `params` the uniform block (the
    /// `Params` struct of the kernel's family, field for field its WGSL twin), `bindings` the
    /// storage buffers, `groups` the workgroup grid.
    pub fn launch<P: bytemuck::Pod>(
        &self,
        kernel: &str,
        params: &P,
        bindings: &[Binding],
        groups: (u32, u32, u32),
    ) {
        let pipeline = self
            .pipelines
            .get(kernel)
            .unwrap_or_else(|| panic!("no kernel {kernel}"));
        let max = self.limits.max_compute_workgroups_per_dimension;
        assert!(
            groups.0 <= max && groups.1 <= max && groups.2 <= max,
            "{kernel}: a grid of {groups:?} workgroups exceeds this GPU's {max} per dimension"
        );
        let mut rec = self.recording.lock().expect("recording");
        let slot = rec.launches as u32;
        let bytes: &[u8] = bytemuck::bytes_of(params);
        assert!(
            bytes.len() as u64 <= PARAMS_BYTES,
            "{kernel}: parameter block too large"
        );
        rec.params.extend_from_slice(bytes);
        rec.params
            .resize(self.slot as usize * (slot as usize + 1), 0);
        let bind_group = self.bind_group(pipeline, slot, bindings);
        let enc = rec
            .encoder
            .get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        let profiler = self.profiler.lock().expect("profiler");
        {
            let timestamp_writes = profiler.as_ref().map(|p| wgpu::ComputePassTimestampWrites {
                query_set: &p.queries,
                beginning_of_pass_write_index: Some(2 * slot),
                end_of_pass_write_index: Some(2 * slot + 1),
            });
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        }
        if profiler.is_some() {
            rec.kernels.push(kernel.to_string());
        }
        drop(profiler);
        rec.launches += 1;
        if rec.launches == MAX_PENDING {
            self.submit(&mut rec);
        }
    }

    /// The bind group of a launch: its parameter slot and storage buffers, made once.
    fn bind_group(
        &self,
        pipeline: &wgpu::ComputePipeline,
        slot: u32,
        bindings: &[Binding],
    ) -> wgpu::BindGroup {
        let key: BindKey = (
            pipeline.clone(),
            slot,
            bindings.iter().map(|(i, b)| (*i, (*b).clone())).collect(),
        );
        let mut cache = self.bind_groups.lock().expect("bind groups");
        if let Some(group) = cache.get(&key) {
            return group.clone();
        }
        if cache.len() >= MAX_BIND_GROUPS {
            cache.clear();
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.uniforms,
                offset: slot as u64 * self.slot,
                size: wgpu::BufferSize::new(PARAMS_BYTES),
            }),
        }];
        entries.extend(bindings.iter().map(|(binding, buf)| wgpu::BindGroupEntry {
            binding: *binding,
            resource: buf.as_entire_binding(),
        }));
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        self.created_bind_groups.fetch_add(1, Ordering::Relaxed);
        cache.insert(key, group.clone());
        group
    }

    /// Uploads the recorded launches' parameters and submits their commands.
    fn submit(&self, rec: &mut Recording) {
        if let Some(mut enc) = rec.encoder.take() {
            if !rec.params.is_empty() {
                self.queue.write_buffer(&self.uniforms, 0, &rec.params);
            }
            let mut profiler = self.profiler.lock().expect("profiler");
            match profiler.as_mut() {
                Some(p) if rec.launches > 0 => {
                    let bytes = 16 * rec.launches as u64;
                    enc.resolve_query_set(&p.queries, 0..2 * rec.launches as u32, &p.resolved, 0);
                    enc.copy_buffer_to_buffer(&p.resolved, 0, &p.readback, 0, bytes);
                    self.queue.submit([enc.finish()]);
                    self.add_kernel_times(p, &rec.kernels, bytes);
                }
                _ => {
                    self.queue.submit([enc.finish()]);
                }
            }
        }
        rec.params.clear();
        rec.launches = 0;
        rec.kernels.clear();
    }

    /// Waits for a profiled submission and adds each launch's time to its kernel's total.
    fn add_kernel_times(&self, p: &mut Profiler, kernels: &[String], bytes: u64) {
        let slice = p.readback.slice(..bytes);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        if self
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .is_err()
        {
            return; // the device is lost: the next wait reports it
        }
        let ticks: Vec<u64> =
            bytemuck::cast_slice(&slice.get_mapped_range().expect("mapped")).to_vec();
        p.readback.unmap();
        for (kernel, t) in kernels.iter().zip(ticks.chunks_exact(2)) {
            let total = p
                .totals
                .entry(kernel.clone())
                .or_insert_with(|| KernelTime {
                    kernel: kernel.clone(),
                    ..Default::default()
                });
            total.launches += 1;
            total.ms += t[1].saturating_sub(t[0]) as f64 * p.period_ns / 1e6;
        }
    }

    /// Turns on kernel timing with timestamp queries; an error if the adapter has none.
    pub fn start_profiling(&self) -> Result<()> {
        if !self
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            bail!("{} has no timestamp queries", self.info.name);
        }
        self.flush();
        let queries = 2 * MAX_PENDING as u64;
        let buffer = |label, usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 8 * queries,
                usage,
                mapped_at_creation: false,
            })
        };
        use wgpu::BufferUsages as U;
        *self.profiler.lock().expect("profiler") = Some(Profiler {
            queries: self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: queries as u32,
            }),
            resolved: buffer("resolved timestamps", U::QUERY_RESOLVE | U::COPY_SRC),
            readback: buffer("timestamp readback", U::MAP_READ | U::COPY_DST),
            period_ns: self.queue.get_timestamp_period() as f64,
            totals: HashMap::new(),
        });
        Ok(())
    }

    /// GPU time per kernel since profiling started (or since the last call), slowest first;
    /// `None` when not profiling.
    pub fn take_kernel_times(&self) -> Option<Vec<KernelTime>> {
        self.flush();
        let mut profiler = self.profiler.lock().expect("profiler");
        let p = profiler.as_mut()?;
        let mut times: Vec<KernelTime> = p.totals.drain().map(|(_, t)| t).collect();
        times.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Some(times)
    }

    /// Records a copy between buffers.
    pub fn copy(
        &self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        let mut rec = self.recording.lock().expect("recording");
        let enc = rec
            .encoder
            .get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        enc.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
    }

    /// Submits everything recorded so far.
    pub fn flush(&self) {
        self.submit(&mut self.recording.lock().expect("recording"));
    }

    /// Submits everything recorded and waits until the device has run it.
    pub fn wait(&self) {
        self.flush();
        self.poll();
    }

    /// Waits for the device, and unwinds with a [`GpuFault`] if it failed.
    fn poll(&self) {
        if let Err(e) = self.device.poll(wgpu::PollType::wait_indefinitely()) {
            std::panic::panic_any(GpuFault(format!("the GPU device was lost: {e}")));
        }
        let syncs = self.syncs.fetch_add(1, Ordering::Relaxed) + 1;
        if self.fail_at_sync == Some(syncs) {
            let injected = "the GPU device was lost (injected by FRACTURE_GPU_FAULT_AT_SYNC)";
            self.fault
                .lock()
                .expect("fault")
                .get_or_insert(injected.into());
        }
        if let Some(what) = self.fault.lock().expect("fault").clone() {
            std::panic::panic_any(GpuFault(what));
        }
    }

    /// Writes host data into a buffer, after everything recorded so far.
    pub fn write(&self, buf: &wgpu::Buffer, data: &[u8]) {
        // queue.write_buffer lands before the next submission: submit what is pending first, so
        // that a pooled buffer still read by recorded commands is not overwritten under them.
        self.flush();
        self.queue.write_buffer(buf, 0, data);
    }

    /// Copies `bytes` of a buffer back to the host, waiting for all recorded work.
    pub fn read(&self, buf: &wgpu::Buffer, bytes: u64) -> Vec<u8> {
        let size = bytes.max(4).next_multiple_of(4);
        let pooled = self
            .readback
            .lock()
            .expect("readback")
            .get_mut(&size)
            .and_then(Vec::pop);
        let staging = pooled.unwrap_or_else(|| {
            self.created_buffers.fetch_add(1, Ordering::Relaxed);
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        self.copy(buf, 0, &staging, 0, bytes);
        self.flush();
        let slice = staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.poll();
        if let Err(e) = rx.recv().expect("the map callback ran") {
            std::panic::panic_any(GpuFault(format!("the GPU could not return a result: {e}")));
        }
        let data = slice.get_mapped_range().expect("mapped").to_vec();
        staging.unmap();
        self.readback
            .lock()
            .expect("readback")
            .entry(size)
            .or_default()
            .push(staging);
        data
    }
}

/// Workgroup grid for `n` invocations of a 1-D kernel: x up to the dispatch limit, then y.
pub fn grid_1d(n: usize) -> (u32, u32, u32) {
    let groups = n.div_ceil(WORKGROUP as usize).max(1);
    let x = groups.min(65_535);
    (x as u32, groups.div_ceil(x) as u32, 1)
}

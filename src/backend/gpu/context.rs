//! The wgpu side of the GPU backend: the device, the compiled kernels, a pool of buffers, and one
//! command encoder into which every kernel launch is recorded until the host needs a result.

use anyhow::{anyhow, bail, Context as _, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// A kernel: its name, its entry point, and values of its override constants.
type Kernel = (&'static str, &'static str, &'static [(&'static str, f64)]);

/// Kernels that set override constants; every other entry point is a kernel of its own name.
const VARIANTS: &[Kernel] = &[
    ("gemm", "gemm", &[("VEC4_B", 0.0)]),
    ("gemm_vec4b", "gemm", &[("VEC4_B", 1.0)]),
];

/// The shader files (one per kernel family) and their entry points.
const SHADERS: &[(&str, &str, &[&str])] = &[
    (
        "elementwise",
        include_str!("../../../shaders/elementwise.wgsl"),
        &[
            "relu_forward",
            "relu_backward",
            "dropout",
            "add_channel_bias",
            "ema",
        ],
    ),
    (
        "gemm",
        include_str!("../../../shaders/gemm.wgsl"),
        &["gemm"],
    ),
    (
        "conv",
        include_str!("../../../shaders/conv.wgsl"),
        &["im2col", "col2im"],
    ),
    (
        "reduce",
        include_str!("../../../shaders/reduce.wgsl"),
        &["channel_sum", "sum_leading"],
    ),
    (
        "batchnorm",
        include_str!("../../../shaders/batchnorm.wgsl"),
        &[
            "stats_sum",
            "stats_var",
            "normalize",
            "backward_reduce",
            "backward_dx",
        ],
    ),
    (
        "pool",
        include_str!("../../../shaders/pool.wgsl"),
        &["forward", "backward"],
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

/// Launches recorded before the encoder is submitted on its own (bounds the uniform buffers held).
const MAX_PENDING: usize = 512;
/// Invocations per workgroup of the 1-D kernels.
pub const WORKGROUP: u32 = 256;

pub struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pipelines: HashMap<String, wgpu::ComputePipeline>,
    /// Free buffers by size in bytes: a training step's tensors have the same sizes every step,
    /// so after the first step every tensor comes from here.
    pool: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    encoder: Mutex<(Option<wgpu::CommandEncoder>, usize)>,
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
        Ok(Arc::new(Context {
            device,
            queue,
            info,
            limits,
            pipelines,
            pool: Mutex::new(HashMap::new()),
            encoder: Mutex::new((None, 0)),
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
            .and_then(Vec::pop)
        {
            return b;
        }
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
            .push(buf);
    }

    /// Records one kernel launch: `kernel` is "file::entry", `params` the uniform block,
    /// `bindings` the storage buffers, `groups` the workgroup grid.
    pub fn launch(
        &self,
        kernel: &str,
        params: &[u32],
        bindings: &[Binding],
        groups: (u32, u32, u32),
    ) {
        let pipeline = self
            .pipelines
            .get(kernel)
            .unwrap_or_else(|| panic!("no kernel {kernel}"));
        let uniform = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(params),
                usage: wgpu::BufferUsages::UNIFORM,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(bindings.iter().map(|(binding, buf)| wgpu::BindGroupEntry {
            binding: *binding,
            resource: buf.as_entire_binding(),
        }));
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut guard = self.encoder.lock().expect("encoder");
        let (encoder, pending) = &mut *guard;
        let enc =
            encoder.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind_group, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        }
        *pending += 1;
        if *pending >= MAX_PENDING {
            let enc = encoder.take().expect("just used");
            *pending = 0;
            self.queue.submit([enc.finish()]);
        }
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
        let mut guard = self.encoder.lock().expect("encoder");
        let enc = guard
            .0
            .get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        enc.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
    }

    /// Submits everything recorded so far.
    pub fn flush(&self) {
        let mut guard = self.encoder.lock().expect("encoder");
        if let Some(enc) = guard.0.take() {
            guard.1 = 0;
            self.queue.submit([enc.finish()]);
        }
    }

    /// Submits everything recorded and waits until the device has run it.
    pub fn wait(&self) {
        self.flush();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("the GPU device was lost");
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
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.copy(buf, 0, &staging, 0, bytes);
        self.flush();
        let slice = staging.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("the GPU device was lost while reading a result back");
        rx.recv()
            .expect("map callback ran")
            .expect("the GPU device failed to map a result buffer");
        let data = slice.get_mapped_range().expect("mapped").to_vec();
        staging.unmap();
        data
    }
}

/// Workgroup grid for `n` invocations of a 1-D kernel: x up to the dispatch limit, then y.
pub fn grid_1d(n: usize) -> (u32, u32, u32) {
    let groups = n.div_ceil(WORKGROUP as usize).max(1);
    let x = groups.min(65_535);
    (x as u32, groups.div_ceil(x) as u32, 1)
}

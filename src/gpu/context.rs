//! The GPU context: adapter, device, queue, the features and limits in use, and the pipeline
//! cache. The only place that knows whether quill runs natively or in a browser.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Optional features quill uses when the adapter has them.
const WANTED_FEATURES: wgpu::Features = wgpu::Features::SHADER_F16
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::SUBGROUP);

thread_local!(static SUBMITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });

/// A compiled compute pipeline and its bind group layout (group 0).
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub label: String,
}

/// What the uncaptured-error handler and the device-lost callback saw.
#[derive(Default)]
struct Faults {
    error: Option<String>,
    lost: Option<String>,
}

pub struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    pipelines: Mutex<HashMap<String, Arc<Pipeline>>>,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    faults: Arc<Mutex<Faults>>,
    arenas: Mutex<Vec<wgpu::Buffer>>,
    query_sets_created: std::sync::atomic::AtomicUsize,
    /// Bytes of all storage buffers created (none is freed while a model is loaded, so this is
    /// also the peak).
    allocated: std::sync::atomic::AtomicU64,
    /// Two small storage buffers bound where a kernel's optional outputs are unused (writable
    /// bindings of one dispatch must not alias).
    pub(crate) spare: [wgpu::Buffer; 2],
}

/// How to reach a GPU on this platform, for the error shown when there is none.
pub fn no_adapter_hint() -> &'static str {
    if cfg!(target_arch = "wasm32") {
        "this browser offers no WebGPU adapter: use a browser with WebGPU enabled (Chrome/Edge 113+, or chromium --enable-unsafe-webgpu)"
    } else if cfg!(target_os = "linux") {
        "install a Vulkan driver; without a GPU, Mesa's software rasterizer lavapipe works: `sudo apt-get install mesa-vulkan-drivers libvulkan1` (and set XDG_RUNTIME_DIR when running as root or in a container)"
    } else if cfg!(target_os = "macos") {
        "Metal is needed (macOS 10.13 or later on supported hardware)"
    } else {
        "install or update the GPU driver (Vulkan or DX12)"
    }
}

/// `WGPU_BACKEND` (a comma list such as `vulkan,gl`), else the primary backends. A value that
/// names no backend is the user's mistake, not a missing driver: say so instead of searching
/// no backend at all and suggesting a Vulkan install.
fn backends_from_env() -> Result<wgpu::Backends> {
    match std::env::var("WGPU_BACKEND") {
        Ok(v) if !v.trim().is_empty() => {
            let b = wgpu::Backends::from_comma_list(&v);
            if b.is_empty() {
                return Err(Error::arg("WGPU_BACKEND", format!("'{v}' names no backend; use vulkan, metal, dx12, gl or webgpu (comma-separated), or unset it")));
            }
            Ok(b)
        }
        _ => Ok(wgpu::Backends::PRIMARY),
    }
}

async fn pick_adapter(instance: &wgpu::Instance, backends: wgpu::Backends) -> Result<wgpu::Adapter> {
    let wanted_name = if cfg!(target_arch = "wasm32") { None } else { std::env::var("WGPU_ADAPTER_NAME").ok() };
    if let Some(wanted) = wanted_name.filter(|s| !s.is_empty()) {
        let adapters = instance.enumerate_adapters(backends).await;
        let names: Vec<String> = adapters.iter().map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend)).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted.to_lowercase()))
            .ok_or_else(|| {
                Error::NoAdapter(format!(
                    "WGPU_ADAPTER_NAME={wanted:?} matches no adapter; available: {}",
                    if names.is_empty() { "none".to_string() } else { names.join(", ") }
                ))
            });
    }
    let options = wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::from_env().unwrap_or(wgpu::PowerPreference::HighPerformance),
        force_fallback_adapter: false,
        compatible_surface: None,
        apply_limit_buckets: false,
    };
    instance.request_adapter(&options).await.map_err(|e| {
        let names: Vec<String> = backends.iter_names().map(|(n, _)| n.to_lowercase()).collect();
        Error::NoAdapter(format!("no GPU adapter found on backends {} ({e}); {}", names.join(", "), no_adapter_hint()))
    })
}

impl Context {
    /// Opens the adapter chosen by `WGPU_BACKEND` / `WGPU_ADAPTER_NAME` / `WGPU_POWER_PREF`
    /// (or the best one), with every optional feature quill can use and the adapter's limits.
    pub async fn new() -> Result<Self> {
        let backends = if cfg!(target_arch = "wasm32") {
            wgpu::Backends::BROWSER_WEBGPU
        } else {
            backends_from_env()?
        };
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = pick_adapter(&instance, backends).await?;
        let info = adapter.get_info();
        let features = adapter.features() & WANTED_FEATURES;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("quill"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::NoAdapter(format!("adapter '{}' refused to open a device: {e}", info.name)))?;

        let faults = Arc::new(Mutex::new(Faults::default()));
        let f = faults.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            log::error!("wgpu: {e}");
            f.error.get_or_insert_with(|| e.to_string());
        }));
        let f = faults.clone();
        device.set_device_lost_callback(move |reason, msg| {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            f.lost.get_or_insert_with(|| format!("{reason:?}: {msg}"));
        });
        let spare = [0, 1].map(|i| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(["spare output 0", "spare output 1"][i]),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        });
        Ok(Context {
            device,
            queue,
            info,
            features,
            limits,
            pipelines: Mutex::new(HashMap::new()),
            modules: Mutex::new(HashMap::new()),
            faults,
            arenas: Mutex::new(Vec::new()),
            query_sets_created: Default::default(),
            allocated: Default::default(),
            spare,
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    /// The adapter's name; browsers may keep it to themselves.
    pub fn adapter_name(&self) -> &str {
        if self.info.name.is_empty() {
            "unnamed WebGPU adapter"
        } else {
            &self.info.name
        }
    }

    /// Has the device been lost (the page then opens a new one before loading again)?
    pub fn is_lost(&self) -> bool {
        let _ = self.device.poll(wgpu::PollType::Poll);
        self.faults.lock().unwrap_or_else(|p| p.into_inner()).lost.is_some()
    }

    /// Returns the first GPU error seen since the last check (validation, out of memory,
    /// device lost), naming what was being done.
    pub fn check(&self, during: &str) -> Result<()> {
        let has_error = self.faults.lock().unwrap_or_else(|p| p.into_inner()).error.is_some();
        if has_error {
            // A lost device shows first as validation errors; polling runs the lost callback
            // so the message can say what really happened.
            let _ = self.device.poll(wgpu::PollType::Poll);
        }
        let mut f = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lost) = &f.lost {
            return Err(Error::gpu(during, format!("device lost ({lost})")));
        }
        if let Some(e) = f.error.take() {
            return Err(Error::gpu(during, e));
        }
        Ok(())
    }

    /// The pipeline for `entry` of `shader` with the given override constants, compiled once.
    /// Whether kernels read their parameters from storage rather than uniform buffers: on
    /// lavapipe (Vulkan on a CPU-type adapter). lavapipe compiles a shader again, per dispatch,
    /// with the values of the uniforms that steer its loops and branches inlined ("inlinable
    /// uniforms"), so a kernel with a large body paid a compile at every dispatch: the sampler's
    /// chain cost ~66 ms a pass there with uniform parameters, ~8 ms with storage ones. Every
    /// shader has at most 8 storage bindings with its parameters; the limit is checked anyway.
    pub fn params_in_storage(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu && self.info.backend == wgpu::Backend::Vulkan && self.limits.max_storage_buffers_per_shader_stage >= 16
    }

    /// The WGSL of `shader` for this adapter: common.wgsl first, and the parameters in storage
    /// buffers where `params_in_storage` says (the parameter structs have the same layout in both).
    pub fn shader_source(&self, shader: &Shader) -> String {
        let source = shader.source();
        if self.params_in_storage() {
            source.replace("var<uniform> ", "var<storage, read> ")
        } else {
            source
        }
    }

    pub fn pipeline(&self, shader: &'static Shader, entry: &str, constants: &[(&str, f64)]) -> Result<Arc<Pipeline>> {
        let key = format!("{}:{entry}:{constants:?}", shader.name);
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&key) {
            return Ok(p.clone());
        }
        let module = {
            let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            modules
                .entry(shader.name)
                .or_insert_with(|| {
                    self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(shader.name),
                        source: wgpu::ShaderSource::Wgsl(self.shader_source(shader).into()),
                    })
                })
                .clone()
        };
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&key),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants, zero_initialize_workgroup_memory: false },
            cache: None,
        });
        self.check(&format!("compiling {key}"))?;
        let layout = pipeline.get_bind_group_layout(0);
        let p = Arc::new(Pipeline { pipeline, layout, label: key.clone() });
        cache.insert(key, p.clone());
        Ok(p)
    }

    /// A parameter arena of `size` bytes, from the pool or new. The recorder holding it has it
    /// alone until it gives it back after its submit (queue writes are ordered after earlier
    /// submissions, so the next user cannot overwrite data still to be read).
    pub(crate) fn take_arena(&self, size: u64) -> wgpu::Buffer {
        let mut pool = self.arenas.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = pool.iter().position(|b| b.size() == size) {
            return pool.swap_remove(i);
        }
        drop(pool);
        let binding = if self.params_in_storage() { wgpu::BufferUsages::STORAGE } else { wgpu::BufferUsages::UNIFORM };
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params arena"),
            size,
            usage: binding | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    pub(crate) fn give_back_arenas(&self, buffers: impl IntoIterator<Item = wgpu::Buffer>) {
        self.arenas.lock().unwrap_or_else(|p| p.into_inner()).extend(buffers);
    }

    /// Whether quill's subgroup kernels may run here: the adapter has SUBGROUP and quill runs
    /// natively (naga takes subgroup builtins with no `enable subgroups;`, which it refuses and
    /// the browsers' WGSL compiler requires, so the web build keeps the shared-memory shapes).
    pub fn subgroups(&self) -> bool {
        !cfg!(target_arch = "wasm32") && self.features.contains(wgpu::Features::SUBGROUP)
    }

    /// Are GPU timestamps used for profiles? (The adapter has them, and QUILL_PROFILE_CPU
    /// does not ask for CPU timing instead.)
    pub fn gpu_timestamps(&self) -> bool {
        let forced_off = !cfg!(target_arch = "wasm32") && std::env::var_os("QUILL_PROFILE_CPU").is_some();
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY) && !forced_off
    }

    /// A timestamp query set of `count` queries (profiling only).
    pub(crate) fn query_set(&self, count: u32) -> wgpu::QuerySet {
        self.query_sets_created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("pass timestamps"), ty: wgpu::QueryType::Timestamp, count })
    }

    /// Counts one `queue.submit` made by this thread (every submit quill makes goes through here).
    pub(crate) fn count_submit(&self) {
        SUBMITS.with(|n| n.set(n.get() + 1));
    }

    /// How many command buffers this thread has submitted so far, on any context: tests count a
    /// step's submits by the difference (per thread, so tests running side by side don't mix).
    pub fn submits_by_this_thread(&self) -> u64 {
        SUBMITS.with(|n| n.get())
    }

    /// How many query sets this context has created: zero unless something was profiled.
    pub fn query_sets_created(&self) -> usize {
        self.query_sets_created.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A buffer that timestamps resolve into (`map_read` false) or are read back from.
    pub(crate) fn query_buffer(&self, size: u64, map_read: bool) -> wgpu::Buffer {
        let usage = if map_read {
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST
        } else {
            wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC
        };
        self.device.create_buffer(&wgpu::BufferDescriptor { label: Some("timestamps"), size, usage, mapped_at_creation: false })
    }

    /// A device-local storage buffer initialised from `data`.
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.upload_with(label, bytes.len(), |view| view.slice(..bytes.len()).copy_from_slice(bytes))
    }

    /// A storage buffer of at least `len` bytes that `fill` writes in place, in its mapping:
    /// data produced piece by piece (repacked weight rows) never needs a whole copy first.
    pub fn upload_with(&self, label: &str, len: usize, fill: impl FnOnce(&mut wgpu::BufferViewMut)) -> Result<wgpu::Buffer> {
        let size = (len as u64).max(4).next_multiple_of(4);
        self.check_size(label, size)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        fill(&mut buffer.get_mapped_range_mut(..).map_err(|e| Error::gpu(format!("uploading {label}"), e.to_string()))?);
        buffer.unmap();
        self.check(&format!("uploading {label}"))?;
        Ok(buffer)
    }

    /// A zeroed storage buffer of `size` bytes.
    pub fn storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        let size = size.max(4).next_multiple_of(4);
        self.check_size(label, size)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.check(&format!("allocating {label}"))?;
        Ok(buffer)
    }

    /// The most bytes one storage binding (and one buffer) may hold on this adapter.
    pub fn binding_limit(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// Bytes of GPU storage allocated so far.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn check_size(&self, label: &str, size: u64) -> Result<()> {
        let max = self.binding_limit();
        if size > max {
            return Err(Error::MissingCapability {
                adapter: self.info.name.clone(),
                msg: format!("buffer '{label}' needs {size} bytes but one binding holds at most {max}"),
            });
        }
        self.allocated.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Copies `size` bytes at `offset` of `buffer` back to the CPU (waits for the GPU).
    pub async fn read_bytes_async(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        self.count_submit();
        self.queue.submit([enc.finish()]);
        self.map_read_async(&staging, size).await
    }

    /// Maps a MAP_READ buffer that a submitted command buffer fills, and returns its bytes
    /// once the GPU is done. Natively `poll` waits for the GPU here; in a browser `poll` does
    /// nothing and the event loop runs the map callback while the caller awaits.
    pub async fn map_read_async(&self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let (tx, rx) = oneshot();
        staging.map_async(wgpu::MapMode::Read, 0..size, move |r| tx.send(r));
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::gpu("waiting for the GPU", e.to_string()))?;
        let mapped = rx.await;
        self.check("reading results back")?;
        match mapped {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::gpu("mapping a read-back buffer", e.to_string())),
            None => return Err(Error::gpu("mapping a read-back buffer", "the map callback never ran")),
        }
        let bytes = staging
            .get_mapped_range(0..size)
            .map_err(|e| Error::gpu("mapping a read-back buffer", e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }

    /// Submits the uploads made so far and, natively, waits for them, so that wgpu frees their
    /// staging copies: a model loaded tensor by tensor then holds each upload's staging memory
    /// only until the next settle, not until the first generation. A browser frees them on its
    /// own after the submit (nothing there may block).
    pub fn settle_uploads(&self) {
        self.count_submit();
        self.queue.submit([]);
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
    }

    /// Resolves when the GPU has finished every command buffer submitted so far.
    pub async fn finished(&self) -> Result<()> {
        let (tx, rx) = oneshot();
        self.queue.on_submitted_work_done(move || tx.send(()));
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::gpu("waiting for the GPU", e.to_string()))?;
        rx.await.ok_or_else(|| Error::gpu("waiting for the GPU", "the work-done callback never ran"))?;
        self.check("waiting for the GPU")
    }

    pub async fn read_f32_async(&self, buffer: &wgpu::Buffer, offset_elems: usize, n: usize) -> Result<Vec<f32>> {
        let bytes = self.read_bytes_async(buffer, offset_elems as u64 * 4, n as u64 * 4).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    pub async fn read_u32_async(&self, buffer: &wgpu::Buffer, offset_elems: usize, n: usize) -> Result<Vec<u32>> {
        let bytes = self.read_bytes_async(buffer, offset_elems as u64 * 4, n as u64 * 4).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    // Blocking forms of the read-backs above, for native code. In a browser nothing may block
    // (the map callback needs the event loop): the web entry point awaits the async forms.

    pub fn read_bytes(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        pollster::block_on(self.read_bytes_async(buffer, offset, size))
    }

    pub fn map_read(&self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        pollster::block_on(self.map_read_async(staging, size))
    }

    pub fn read_f32(&self, buffer: &wgpu::Buffer, offset_elems: usize, n: usize) -> Result<Vec<f32>> {
        pollster::block_on(self.read_f32_async(buffer, offset_elems, n))
    }

    pub fn read_u32(&self, buffer: &wgpu::Buffer, offset_elems: usize, n: usize) -> Result<Vec<u32>> {
        pollster::block_on(self.read_u32_async(buffer, offset_elems, n))
    }

    /// A human-readable report of the adapter, its features and its limits (`quill info`).
    pub fn describe(&self) -> String {
        let i = &self.info;
        let l = &self.limits;
        let mut s = String::new();
        s += &format!("adapter:  {}\n", i.name);
        s += &format!("backend:  {:?}\n", i.backend);
        s += &format!("type:     {:?}\n", i.device_type);
        s += &format!("driver:   {} {}\n", i.driver, i.driver_info);
        s += &format!("vendor:   {:#06x}  device: {:#06x}\n", i.vendor, i.device);
        let mut feats: Vec<String> = self.features.iter_names().map(|(n, _)| n.to_string()).collect();
        if feats.is_empty() {
            feats.push("none".into());
        }
        s += &format!("features used: {}\n", feats.join(", "));
        s += "limits:\n";
        s += &format!("  max_buffer_size                      {}\n", l.max_buffer_size);
        s += &format!("  max_storage_buffer_binding_size      {}\n", l.max_storage_buffer_binding_size);
        s += &format!("  max_storage_buffers_per_shader_stage {}\n", l.max_storage_buffers_per_shader_stage);
        s += &format!("  max_compute_workgroup_storage_size   {}\n", l.max_compute_workgroup_storage_size);
        s += &format!("  max_compute_invocations_per_workgroup {}\n", l.max_compute_invocations_per_workgroup);
        s += &format!("  max_compute_workgroups_per_dimension {}\n", l.max_compute_workgroups_per_dimension);
        s += &format!("  min_uniform_buffer_offset_alignment  {}\n", l.min_uniform_buffer_offset_alignment);
        s += &format!("  subgroup size                        {}..{}\n", i.subgroup_min_size, i.subgroup_max_size);
        s
    }
}

/// The GPU context shared by the tests of one test binary (opening a device on lavapipe is
/// slow). Without an adapter it returns None so a developer without a GPU can run the rest,
/// but when `CI` is set it panics: CI must really run the GPU tests.
#[cfg(not(target_arch = "wasm32"))]
pub fn test_context() -> Option<&'static Context> {
    use std::sync::OnceLock;
    static CTX: OnceLock<Option<Context>> = OnceLock::new();
    CTX.get_or_init(|| match Context::new_blocking() {
        Ok(ctx) => Some(ctx),
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI is set but no GPU adapter could be opened: {e}"),
        Err(e) => {
            eprintln!("SKIPPING GPU TEST (no adapter, CI unset): {e}");
            None
        }
    })
    .as_ref()
}

/// Blocking tests cannot run in a browser (nothing may wait there); this keeps them compiling
/// for wasm32, where the runner skips plain `#[test]`s. GPU tests written with `gpu_test!`
/// run in the browser on `test_context_async()`.
#[cfg(target_arch = "wasm32")]
pub fn test_context() -> Option<&'static Context> {
    None
}

/// The GPU context shared by the tests of one browser test binary (WebGPU; the page's
/// adapter). Panics without one: the browser tests exist to run on the GPU.
#[cfg(target_arch = "wasm32")]
pub async fn test_context_async() -> &'static Context {
    thread_local!(static CTX: std::cell::OnceCell<&'static Context> = const { std::cell::OnceCell::new() });
    if let Some(ctx) = CTX.with(|c| c.get().copied()) {
        return ctx;
    }
    let ctx: &'static Context = Box::leak(Box::new(Context::new().await.unwrap_or_else(|e| panic!("no WebGPU adapter: {e}"))));
    CTX.with(|c| *c.get_or_init(|| ctx))
}

/// Declares a GPU test whose body awaits the `*_async` read-backs, so one body runs in both
/// places: natively a `#[test]` on `test_context()` (blocking on the body), in a browser a
/// `wasm_bindgen_test` on `test_context_async()`.
///
/// ```ignore
/// gpu_test!(fn swiglu_matches_reference(ctx) { ... ctx.read_f32_async(&buf, 0, n).await ... });
/// ```
#[cfg(test)]
macro_rules! gpu_test {
    ($(#[$meta:meta])* fn $name:ident($ctx:ident) $body:block) => {
        #[cfg(not(target_arch = "wasm32"))]
        #[test]
        $(#[$meta])*
        fn $name() {
            let Some($ctx) = $crate::gpu::context::test_context() else { return };
            pollster::block_on(async move $body)
        }
        #[cfg(target_arch = "wasm32")]
        #[wasm_bindgen_test::wasm_bindgen_test]
        $(#[$meta])*
        async fn $name() {
            let $ctx = $crate::gpu::context::test_context_async().await;
            $body
        }
    };
}
#[cfg(test)]
pub(crate) use gpu_test;

/// A one-value channel whose receiver is a future: wgpu's callbacks (buffer mapped, work
/// done) send, and the reader awaits. The receiver gets None when the callback was dropped
/// without running.
fn oneshot<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot { value: None, closed: false, waker: None }));
    (Sender(slot.clone()), Receiver(slot))
}

struct Slot<T> {
    value: Option<T>,
    closed: bool,
    waker: Option<std::task::Waker>,
}

struct Sender<T>(Arc<Mutex<Slot<T>>>);
struct Receiver<T>(Arc<Mutex<Slot<T>>>);

impl<T> Sender<T> {
    fn send(self, value: T) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).value = Some(value);
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.closed = true;
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }
}

impl<T> std::future::Future for Receiver<T> {
    type Output = Option<T>;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.value.is_some() || slot.closed {
            return std::task::Poll::Ready(slot.value.take());
        }
        slot.waker = Some(cx.waker().clone());
        std::task::Poll::Pending
    }
}

/// A WGSL source embedded in the binary. Every shader gets `common.wgsl` prepended.
pub struct Shader {
    pub name: &'static str,
    pub body: &'static str,
}

pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");

impl Shader {
    pub fn source(&self) -> String {
        format!("{COMMON_WGSL}\n{}", self.body)
    }
}

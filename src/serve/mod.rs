//! `quill serve`: an OpenAI-compatible HTTP server. HTTP runs on tokio; the GPU work runs on
//! one thread (`engine`) fed by a channel. The server keeps no state between requests that
//! another replica would need (a slot's KV cache is only a cache), so replicas scale out
//! behind any load balancer (deploy/).

pub mod api;
pub mod engine;
pub mod metrics;
pub mod page;
pub mod routes;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Args;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;

use quill::error::{Error, Result};
use quill::gpu::Context;

use engine::{Handle, Load};
use metrics::Metrics;
use routes::{AppState, ModelInfo};

#[derive(Args)]
pub struct ServeArgs {
    /// GGUF file or Hugging Face model directory [default: the fetched SmolLM2].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 = any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences generated at once (slots, each with its own KV cache).
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Context length of each slot [default: the model's, at most 2048].
    #[arg(long)]
    ctx: Option<usize>,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long, conflicts_with = "api_key_file")]
    api_key: Option<String>,
    /// Read the API key from a file (its first line).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Sequences that may wait for a slot; beyond that requests get 429 with Retry-After.
    #[arg(long, default_value_t = 16)]
    max_queue: usize,
    /// Seconds a client may take to send a request's head or body.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Seconds running requests get to finish after SIGTERM or SIGINT.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    /// A Jinja chat template to use instead of the model's own.
    #[arg(long)]
    chat_template_file: Option<PathBuf>,
    /// A folder where the studio page (at /) saves stories, atomically on every token.
    #[arg(long)]
    stories: Option<PathBuf>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if args.parallel == 0 || args.parallel > 64 {
        return Err(Error::arg("--parallel", format!("{} must be between 1 and 64", args.parallel)));
    }
    let api_key = match &args.api_key_file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            let key = text.lines().next().unwrap_or("").trim().to_string();
            if key.is_empty() {
                return Err(Error::arg("--api-key-file", format!("{} has no key on its first line", f.display())));
            }
            Some(key)
        }
        None => args.api_key.clone().filter(|k| !k.is_empty()),
    };
    let template = match &args.chat_template_file {
        Some(f) => Some(std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?),
        None => None,
    };
    if let Some(dir) = &args.stories {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let path = crate::cli::model_path(args.model.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| Error::io("tokio runtime", e))?;
    rt.block_on(serve(args, path, api_key, template))
}

async fn serve(args: ServeArgs, path: PathBuf, api_key: Option<String>, template: Option<String>) -> Result<()> {
    let metrics = Arc::new(Metrics::new().map_err(|e| Error::arg("metrics", e.to_string()))?);
    let load = Arc::new(Load { outstanding: AtomicUsize::new(0), busy: AtomicUsize::new(0), slots: args.parallel, max_queue: args.max_queue });
    let info = Arc::new(OnceLock::new());
    let (tx, rx) = std::sync::mpsc::channel();
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let state = Arc::new(AppState { engine: Handle { tx, load: load.clone() }, metrics: metrics.clone(), info: info.clone(), api_key, body_timeout: Duration::from_secs(args.timeout), started, stories: args.stories.clone() });
    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| Error::io(&addr, e))?;
    let local = listener.local_addr().map_err(|e| Error::io(&addr, e))?;
    eprintln!("listening on http://{local}");

    // The GPU thread loads the model (GET /health says 503 until then) and runs the engine.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let ctx_arg = args.ctx;
    std::thread::Builder::new()
        .name("quill-gpu".into())
        .spawn(move || {
            let mut ready = Some(ready_tx);
            let r = gpu_thread(&path, ctx_arg, template, rx, &load, &metrics, &info, &mut ready);
            match (r, ready.take()) {
                (Err(e), Some(tx)) => drop(tx.send(Err(e))),
                (Err(e), None) => eprintln!("error: the GPU thread stopped: {e}"),
                (Ok(()), _) => {}
            }
        })
        .map_err(|e| Error::io("GPU thread", e))?;

    let failed = async {
        match ready_rx.await {
            Ok(Ok(())) => std::future::pending().await,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(Error::gpu("loading the model", "the GPU thread stopped")),
        }
    };
    let stop = async {
        tokio::select! {
            e = failed => e,
            _ = signals() => None,
        }
    };
    let router = routes::router(state);
    match serve_http(listener, router, stop, Duration::from_secs(args.timeout), Duration::from_secs(args.shutdown_grace)).await {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn gpu_thread(
    path: &std::path::Path,
    ctx_arg: Option<usize>,
    template: Option<String>,
    rx: std::sync::mpsc::Receiver<Vec<engine::Job>>,
    load: &Load,
    metrics: &Metrics,
    info: &OnceLock<ModelInfo>,
    ready: &mut Option<tokio::sync::oneshot::Sender<Result<()>>>,
) -> Result<()> {
    let ctx = Context::new_blocking()?;
    let mut model = crate::cli::load(&ctx, path)?;
    if template.is_some() {
        model.tokenizer.chat_template = template;
    }
    let ctx_len = ctx_arg.unwrap_or(model.config().max_ctx.min(2048));
    let name = path.file_name().map_or_else(|| model.source.clone(), |n| n.to_string_lossy().into_owned());
    let model_info = ModelInfo::new(name, model.tokenizer.clone(), ctx_len, model.config().vocab, model.defaults.clone());
    engine::run(&ctx, &model, ctx_len, rx, load, metrics, || {
        let _ = info.set(model_info);
        if let Some(tx) = ready.take() {
            let _ = tx.send(Ok(()));
        }
        eprintln!("ready: {} slots of {ctx_len} positions", load.slots);
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn signals() {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => drop(s.recv().await),
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Serves HTTP/1.1 until `stop` resolves; then stops accepting, lets running requests finish
/// for up to `grace`, and returns what `stop` gave. A client gets `timeout` to send a
/// request's head (idle keep-alive connections are closed after it too).
async fn serve_http<T>(listener: tokio::net::TcpListener, router: axum::Router, stop: impl Future<Output = T>, timeout: Duration, grace: Duration) -> T {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(timeout);
    tokio::pin!(stop);
    let out = loop {
        tokio::select! {
            out = &mut stop => break out,
            conn = listener.accept() => {
                let Ok((tcp, _)) = conn else {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let conn = http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router.clone()));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    };
    drop(listener);
    eprintln!("shutting down: running requests get up to {} s", grace.as_secs());
    tokio::select! {
        _ = graceful.shutdown() => eprintln!("all connections closed"),
        _ = tokio::time::sleep(grace) => eprintln!("grace period over; exiting"),
    }
    out
}

use clap::Parser;

fn main() -> std::process::ExitCode {
    let config = rbee_worker::Config::parse();
    // Before any thread starts: candle's pool (models in formats without an rbee kernel) sizes
    // itself from this; rbee's own inference threads are started by the engine.
    let threads = config.inference_threads();
    // SAFETY: single-threaded here; the runtime and the pools start below.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return rbee_runtime::exit_code(Err(e), |_| rbee_bus::Code::InternalError),
    };
    runtime.block_on(async {
        rbee_runtime::init_tracing();
        tracing::info!(threads, "inference threads");
        let result = rbee_worker::run(config, rbee_runtime::shutdown_on_signals()).await;
        rbee_runtime::exit_code(result, rbee_worker::WorkerError::code)
    })
}

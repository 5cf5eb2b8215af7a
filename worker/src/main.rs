fn main() -> std::process::ExitCode {
    use rbee_runtime::config_file::{go_live, load_or_exit};
    let (loaded, source) = load_or_exit::<rbee_worker::Config>();
    // Before any thread starts: candle's pool (models in formats without an rbee kernel) sizes
    // itself from this; rbee's own inference threads are started by the engine.
    let threads = loaded.config.inference_threads();
    // SAFETY: single-threaded here; the runtime and the pools start below.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return rbee_runtime::exit_code(Err(e), |_| rbee_bus::Code::InternalError),
    };
    runtime.block_on(async {
        let config = go_live(loaded, source, rbee_worker::config::RELOADABLE);
        tracing::info!(threads, "inference threads");
        let result = rbee_worker::run(config.get().as_ref().clone(), rbee_runtime::shutdown_on_signals()).await;
        rbee_runtime::exit_code(result, rbee_worker::WorkerError::code)
    })
}

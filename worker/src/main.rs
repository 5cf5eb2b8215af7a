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
        Err(e) => {
            eprintln!("error[RUNTIME_FAILED]: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        rbee_bus::process::init_tracing();
        tracing::info!(threads, "inference threads");
        let shutdown = rbee_bus::process::shutdown_on_signals();
        match rbee_worker::run(config, shutdown).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error[{}]: {e}", e.code());
                std::process::ExitCode::from(1)
            }
        }
    })
}

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rbee_bus::process::init_tracing();
    let config = rbee_worker::Config::parse();
    let shutdown = rbee_bus::process::shutdown_on_signals();
    match rbee_worker::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            std::process::ExitCode::from(1)
        }
    }
}

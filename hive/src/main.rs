use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    rbee_runtime::init_tracing();
    let config = rbee_hive::Config::parse();
    let result = rbee_hive::run(config, rbee_runtime::shutdown_on_signals()).await;
    rbee_runtime::exit_code(result, rbee_hive::HiveError::code)
}

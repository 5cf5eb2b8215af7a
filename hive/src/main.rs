#[tokio::main]
async fn main() -> std::process::ExitCode {
    use rbee_runtime::config_file::{go_live, load_or_exit};
    let (loaded, source) = load_or_exit::<rbee_hive::Config>();
    let config = go_live(loaded, source, rbee_hive::config::RELOADABLE);
    let result = rbee_hive::run(config, rbee_runtime::shutdown_on_signals()).await;
    rbee_runtime::exit_code(result, rbee_hive::HiveError::code)
}

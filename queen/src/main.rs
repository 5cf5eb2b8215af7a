#[tokio::main]
async fn main() -> std::process::ExitCode {
    use rbee_runtime::config_file::{go_live, load_or_exit};
    let (loaded, source) = load_or_exit::<rbee_queen::Config>();
    let config = go_live(loaded, source, rbee_queen::config::RELOADABLE);
    let result = rbee_queen::run(config, rbee_runtime::shutdown_on_signals()).await;
    rbee_runtime::exit_code(result, rbee_queen::QueenError::code)
}

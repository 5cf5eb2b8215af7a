use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        rbee_runtime::init_tracing(None);
    }
    let cli = rbee_ops::Cli::parse();
    match rbee_ops::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if e.exit_code() != rbee_ops::error::EXIT_INTERRUPTED {
                eprintln!("error[{}]: {}", e.code, e.message);
            }
            std::process::ExitCode::from(e.exit_code())
        }
    }
}

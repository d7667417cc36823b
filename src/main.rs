//! The `quill` command line: thin; parses options, builds a session, streams text.

#[macro_use]
mod stdio;
mod cli;
mod drafts;
mod serve;
mod train_cli;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).format_timestamp(None).init();
    let code = match cli::run() {
        Ok(()) => 0,
        Err(e) => {
            noteln!("error: {e}");
            1
        }
    };
    std::process::exit(code);
}

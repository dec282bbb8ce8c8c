fn main() -> std::process::ExitCode {
    mapper::cli::run()
}

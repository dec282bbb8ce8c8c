/// mimalloc instead of the system's allocator: delivering an event makes
/// many small allocations (JSON values, SQL arguments, strings), and glibc's
/// malloc and free were about 15% of the CPU of the deliver bench
/// (BENCHMARKS.md, *Delivery throughput*).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mapper::cli::run()
}

pub async fn run(_args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    todo!()
}
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

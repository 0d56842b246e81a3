pub fn run(_a: Args) -> anyhow::Result<()> { anyhow::bail!("x") } #[derive(clap::Args)] pub struct Args {}

//! `hy run` (being built; see the issue tracker).

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<i32> {
    anyhow::bail!("`hy run` is not built yet")
}
